//! Articles: drafts, publishing, slugs, visibility, search and trending.

use serde_json::json;

use crate::backend_tests;

const BODY: &str = "Our fact-checkers traced the viral claim to an edited video and compared it with the original broadcast.";

backend_tests! {
    async fn drafts_are_private_until_published(app) {
        let (_, author) = app.user_with_role("author", "fact_checker").await;
        let (_, other) = app.user_with_role("other", "fact_checker").await;
        let (_, reader) = app.user_with_role("reader", "user").await;
        let admin = app.admin_token().await;
        let draft = app.post("/api/v1/blogs", Some(&author), json!({"title": "How we checked the bridge claim", "content": BODY})).await;
        draft.assert(201);
        assert_eq!(draft.body["status"], "draft");
        assert_eq!(draft.body["slug"], "how-we-checked-the-bridge-claim");
        assert_eq!(draft.body["read_time_minutes"], 1);
        assert!(draft.body["excerpt"].as_str().unwrap().starts_with("Our fact-checkers"));
        let (id, slug) = (draft.body["id"].as_str().unwrap().to_owned(), draft.body["slug"].as_str().unwrap().to_owned());

        app.get(&format!("/api/v1/blogs/{slug}"), None).await.assert(404);
        app.get(&format!("/api/v1/blogs/{slug}"), Some(&reader)).await.assert(404);
        app.get(&format!("/api/v1/blogs/{slug}"), Some(&other)).await.assert(404);
        app.get(&format!("/api/v1/blogs/{slug}"), Some(&author)).await.assert(200);
        app.get(&format!("/api/v1/blogs/{slug}"), Some(&admin)).await.assert(200);
        assert_eq!(app.get("/api/v1/blogs", None).await.body["items"].as_array().unwrap().len(), 0);
        assert_eq!(app.get("/api/v1/blogs/mine", Some(&author)).await.body["items"].as_array().unwrap().len(), 1);

        // Only the author or an admin edits and publishes.
        app.request(reqwest::Method::PATCH, &format!("/api/v1/blogs/{id}"), Some(&other), Some(json!({"title": "Hijacked"}))).await.assert(404);
        app.post(&format!("/api/v1/blogs/{id}/publish"), Some(&other), json!({})).await.assert(404);
        let edited = app.request(reqwest::Method::PATCH, &format!("/api/v1/blogs/{id}"), Some(&author), Some(json!({"title": "How we checked it"}))).await;
        edited.assert(200);
        assert_eq!(edited.body["slug"], slug.as_str(), "slugs are stable");

        let published = app.post(&format!("/api/v1/blogs/{id}/publish"), Some(&author), json!({})).await;
        published.assert(200);
        assert_eq!(published.body["status"], "published");
        assert!(published.body["published_at"].is_string());
        app.post(&format!("/api/v1/blogs/{id}/publish"), Some(&author), json!({})).await.assert(409);
        app.get(&format!("/api/v1/blogs/{slug}"), None).await.assert(200);
        assert_eq!(app.get("/api/v1/blogs", None).await.body["items"].as_array().unwrap().len(), 1);

        app.post(&format!("/api/v1/blogs/{id}/archive"), Some(&admin), json!({})).await.assert(200);
        app.get(&format!("/api/v1/blogs/{slug}"), None).await.assert(404);
        assert_eq!(app.get("/api/v1/blogs", None).await.body["items"].as_array().unwrap().len(), 0);

        app.post("/api/v1/blogs", Some(&reader), json!({"title": "Users cannot write", "content": BODY})).await.assert(403);
        let del = app.request(reqwest::Method::DELETE, &format!("/api/v1/blogs/{id}"), Some(&author), None).await;
        assert_eq!(del.status.as_u16(), 204);
        app.get(&format!("/api/v1/blogs/{slug}"), Some(&admin)).await.assert(404);
    }

    async fn colliding_titles_get_numbered_slugs(app) {
        let (_, author) = app.user_with_role("author", "fact_checker").await;
        let mut slugs = Vec::new();
        for _ in 0..3 {
            let res = app.post("/api/v1/blogs", Some(&author), json!({"title": "Fact check: the fuel tax!", "content": BODY})).await;
            res.assert(201);
            slugs.push(res.body["slug"].as_str().unwrap().to_owned());
        }
        assert_eq!(slugs, vec!["fact-check-the-fuel-tax", "fact-check-the-fuel-tax-2", "fact-check-the-fuel-tax-3"]);
    }

    async fn published_articles_are_searchable_and_ranked_by_views(app) {
        let (_, author) = app.user_with_role("author", "fact_checker").await;
        let mut ids = Vec::new();
        for (title, content) in [
            ("Election results explained", "How tallying works and why the election commission count matters for every voter."),
            ("Malaria myths", "Common myths about malaria treatment and what the clinics actually provide to children."),
            ("Draft about elections", "This draft about the election must never appear in public search results."),
        ] {
            let res = app.post("/api/v1/blogs", Some(&author), json!({"title": title, "content": content})).await;
            res.assert(201);
            ids.push(res.body["id"].as_str().unwrap().to_owned());
        }
        for id in &ids[..2] {
            app.post(&format!("/api/v1/blogs/{id}/publish"), Some(&author), json!({})).await.assert(200);
        }
        let res = app.get("/api/v1/blogs/search?q=election", None).await;
        res.assert(200);
        let found: Vec<&str> = res.body["items"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
        assert_eq!(found, vec![ids[0].as_str()]);

        hakikisha::claims::store::add_views(&app.db, hakikisha::claims::store::ViewTable::Blogs, &[(ids[1].parse().unwrap(), 40)]).await.unwrap();
        let trending = app.get("/api/v1/blogs/trending", None).await;
        assert_eq!(trending.body["items"][0]["id"], ids[1].as_str());
        assert_eq!(trending.body["items"].as_array().unwrap().len(), 2);

        let bad = app.post("/api/v1/blogs", Some(&author), json!({"title": "", "content": "short"})).await;
        bad.assert(422);
        let mut f = bad.field_errors();
        f.sort();
        assert_eq!(f, vec!["content", "title"]);
    }
}
