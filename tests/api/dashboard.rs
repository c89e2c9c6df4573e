//! The `/admin` dashboard: login with CSRF, cookie session, sections, assets, JSON stats.

use reqwest::{StatusCode, redirect::Policy};

use crate::backend_tests;

fn hidden_csrf(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = html.find(marker).expect("csrf field") + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

fn cookie_value(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| {
            v.split(';')
                .next()
                .unwrap()
                .split_once('=')
                .unwrap()
                .1
                .to_owned()
        })
}

/// Signs in to the dashboard as the bootstrapped admin: (client, session cookie, form token).
async fn admin_session(app: &crate::helpers::TestApp) -> (reqwest::Client, String, String) {
    let client = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    let page = client
        .get(format!("{}/admin/login", app.base))
        .send()
        .await
        .unwrap();
    let cookie = cookie_value(&page, "hk_csrf").unwrap();
    let csrf = hidden_csrf(&page.text().await.unwrap());
    let ok = client
        .post(format!("{}/admin/login", app.base))
        .header("cookie", format!("hk_csrf={cookie}"))
        .form(&[
            ("login", "root"),
            ("password", crate::helpers::ADMIN_PASSWORD),
            ("csrf", &csrf),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    let session = cookie_value(&ok, "hk_admin").unwrap();
    let html = client
        .get(format!("{}/admin", app.base))
        .header("cookie", format!("hk_admin={session}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let form_token = hidden_csrf(&html);
    (client, session, form_token)
}

backend_tests! {
    async fn the_run_now_and_unblock_buttons_act_and_need_the_form_token(app)
        with &[("RATE_LIMIT_AUTH", "2/15m")];
    {
        let (client, session, csrf) = admin_session(&app).await;
        let post = |path: &'static str, form: Vec<(&'static str, String)>| {
            client.post(format!("{}{path}", app.base))
                .header("cookie", format!("hk_admin={session}"))
                .form(&form)
                .send()
        };
        // Run now: a forged token changes nothing; the real one starts the job.
        let forged = post("/admin/jobs/run", vec![("csrf", "forged".into()), ("job", "daily_report".into())]).await.unwrap();
        assert_eq!(forged.status(), 403);
        let unknown = post("/admin/jobs/run", vec![("csrf", csrf.clone()), ("job", "nope".into())]).await.unwrap();
        assert_eq!(unknown.status(), 404);
        let started = post("/admin/jobs/run", vec![("csrf", csrf.clone()), ("job", "daily_report".into())]).await.unwrap();
        assert_eq!(started.status(), StatusCode::SEE_OTHER);
        let admin = app.admin_token().await;
        let ran = crate::helpers::within(std::time::Duration::from_secs(10), || async {
            let runs = app.get("/api/v1/admin/jobs/daily_report/runs", Some(&admin)).await;
            runs.body["items"].as_array().is_some_and(|a| a.iter().any(|r| r["status"] == "ok"))
        })
        .await;
        assert!(ran.is_some(), "the dashboard's run-now started daily_report");

        // Unblock: exceed the auth tier from a client, see it listed, lift it.
        for _ in 0..3 {
            app.post("/api/v1/auth/refresh", None, serde_json::json!({"refresh_token": "nope"})).await;
        }
        app.post("/api/v1/auth/refresh", None, serde_json::json!({"refresh_token": "nope"})).await.assert(429);
        let page = client.get(format!("{}/admin", app.base)).header("cookie", format!("hk_admin={session}"))
            .send().await.unwrap().text().await.unwrap();
        assert!(page.contains("ip:127.0.0.1"), "the blocked client is listed");
        let forged = post("/admin/rate-limits/unblock", vec![("csrf", "forged".into()), ("tier", "auth".into()), ("key", "ip:127.0.0.1".into())]).await.unwrap();
        assert_eq!(forged.status(), 403);
        let lifted = post("/admin/rate-limits/unblock", vec![("csrf", csrf.clone()), ("tier", "auth".into()), ("key", "ip:127.0.0.1".into())]).await.unwrap();
        assert_eq!(lifted.status(), StatusCode::SEE_OTHER);
        assert_ne!(app.post("/api/v1/auth/refresh", None, serde_json::json!({"refresh_token": "nope"})).await.status, 429);
    }

    async fn an_admin_signs_in_and_sees_every_section(app) {
        let client = reqwest::Client::builder().redirect(Policy::none()).build().unwrap();
        let url = |p: &str| format!("{}{p}", app.base);

        let anon = client.get(url("/admin")).send().await.unwrap();
        assert_eq!(anon.status(), StatusCode::SEE_OTHER);
        assert_eq!(anon.headers()["location"], "/admin/login");

        let page = client.get(url("/admin/login")).send().await.unwrap();
        assert_eq!(page.status(), 200);
        let csrf_cookie = cookie_value(&page, "hk_csrf").unwrap();
        let html = page.text().await.unwrap();
        let csrf = hidden_csrf(&html);
        assert_eq!(csrf, csrf_cookie);

        let post = |login: &'static str, password: &'static str, csrf: String, cookie: String| {
            client.post(url("/admin/login"))
                .header("cookie", format!("hk_csrf={cookie}"))
                .form(&[("login", login), ("password", password), ("csrf", &csrf)])
                .send()
        };
        let forged = post("root", crate::helpers::ADMIN_PASSWORD, "forged".into(), csrf_cookie.clone()).await.unwrap();
        assert_eq!(forged.status(), 403);
        app.register("plain", "user").await;
        let not_admin = post("plain", crate::helpers::PASSWORD, csrf.clone(), csrf_cookie.clone()).await.unwrap();
        assert_eq!(not_admin.status(), 401);

        let ok = post("root", crate::helpers::ADMIN_PASSWORD, csrf.clone(), csrf_cookie.clone()).await.unwrap();
        assert_eq!(ok.status(), StatusCode::SEE_OTHER);
        let set = ok.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect::<Vec<_>>();
        let session_cookie = set.iter().find(|c| c.starts_with("hk_admin=")).unwrap();
        assert!(session_cookie.contains("HttpOnly") && session_cookie.contains("SameSite=Strict"));
        let session = cookie_value(&ok, "hk_admin").unwrap();

        // User-provided text on the page: a resolved claim whose text is markup.
        let (_, submitter) = app.user_with_role("markup", "user").await;
        let admin = app.admin_token().await;
        let claim = app.submit_claim(&submitter, "<script>alert(1)</script> The dam opened in 1961", "other").await;
        app.resolve_claim(&admin, &claim, "false").await;
        app.submit_claim(&submitter, "A second claim that waits for review", "health").await;

        // Traffic for the charts, then one sampler tick's worth of data may or may not exist yet.
        for _ in 0..5 {
            app.get("/api/health", None).await;
        }
        let dash = client.get(url("/admin")).header("cookie", format!("hk_admin={session}")).send().await.unwrap();
        assert_eq!(dash.status(), 200);
        assert!(dash.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
        assert!(dash.headers().contains_key("content-security-policy"));
        let html = dash.text().await.unwrap();
        for section in ["id=\"overview\"", "id=\"history\"", "id=\"database\"", "id=\"factcheck\"", "id=\"cache\"", "id=\"ratelimits\"", "id=\"vault\"", "id=\"jobs\"", "id=\"ai\"", "AI-assisted verdicts", "id=\"report\"", "Run now", "trending_recompute", "Cache hit ratio", "Blocked clients", "Slow queries", "Requests per second", "DB pool utilization", "Latest verdicts", "Acquire wait (probe)"] {
            assert!(html.contains(section), "missing {section}");
        }
        let shown = html.lines().find(|l| l.contains("The dam opened")).unwrap_or_default().to_owned();
        assert!(html.contains("&#60;script&#62;alert(1)&#60;/script&#62; The dam opened in 1961"), "claim text shown escaped: {shown}");
        assert!(!html.contains("<script>alert(1)"), "claim markup must never reach the page raw");
        assert!(!html.contains("cdn") && !html.contains("https://"), "no external resources");

        // A user's API token is not a dashboard session, and a forged cookie is not either.
        let (_, user_token) = app.user_with_role("someone", "user").await;
        let as_user = client.get(url("/admin")).header("cookie", format!("hk_admin={user_token}")).send().await.unwrap();
        assert_eq!(as_user.status(), StatusCode::SEE_OTHER);

        // Logout needs the form token.
        let bad_logout = client.post(url("/admin/logout")).header("cookie", format!("hk_admin={session}"))
            .form(&[("csrf", "nope")]).send().await.unwrap();
        assert_eq!(bad_logout.status(), 403);
        let logout_csrf = hidden_csrf(&html);
        let out = client.post(url("/admin/logout")).header("cookie", format!("hk_admin={session}"))
            .form(&[("csrf", logout_csrf.as_str())]).send().await.unwrap();
        assert_eq!(out.status(), StatusCode::SEE_OTHER);
        assert_eq!(cookie_value(&out, "hk_admin").unwrap(), "");
    }

    async fn assets_are_embedded_with_etags_and_stats_are_admin_only(app) {
        let css = app.client.get(format!("{}/admin/assets/dashboard.css", app.base)).send().await.unwrap();
        assert_eq!(css.status(), 200);
        assert_eq!(css.headers()["content-type"], "text/css");
        let etag = css.headers()["etag"].to_str().unwrap().to_owned();
        let again = app.client.get(format!("{}/admin/assets/dashboard.css", app.base)).header("if-none-match", &etag).send().await.unwrap();
        assert_eq!(again.status(), 304);
        app.get("/admin/assets/nope.js", None).await.assert(404);

        let admin = app.admin_token().await;
        let stats = app.get("/api/system/stats", Some(&admin)).await;
        stats.assert(200);
        assert_eq!(stats.body["dependencies"][0]["name"], "database");
        assert_eq!(stats.body["dependencies"][0]["status"], "up");
        assert!(stats.body["pools"][0]["max"].as_u64().unwrap() >= 1);
        assert!(stats.body["process"]["rss_bytes"].as_u64().unwrap() > 0);
        assert_eq!(stats.body["factcheck"]["review_queue"], 0);
        let (_, user) = app.user_with_role("nosy", "user").await;
        app.submit_claim(&user, "Claims waiting for review show in the stats", "other").await;
        let stats = app.get("/api/system/stats", Some(&admin)).await;
        assert_eq!(stats.body["factcheck"]["review_queue"], 1);
        assert_eq!(stats.body["factcheck"]["claims_by_status"][0]["status"], "pending");
        app.get("/api/system/stats", Some(&user)).await.assert(403);
        app.get("/api/system/stats", None).await.assert(401);
    }
}
