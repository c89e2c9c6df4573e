//! The vault's passphrases and secrets never reach the logs: a capturing subscriber at TRACE
//! (every crate, `log` records included) watches create, reveal, a wrong passphrase, bad input
//! and rotation, and neither string may appear in what it captured.
//!
//! A test binary of its own, because the subscriber is process-global and TRACE everywhere
//! would slow the main suite.

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
};

use serde_json::json;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        let writer = capture.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init()
            .expect("install the capturing subscriber");
        capture
    })
}

fn captured() -> String {
    String::from_utf8_lossy(&capture().0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

backend_tests! {
    async fn neither_passphrases_nor_secrets_appear_in_trace_logs(app) {
        let _ = capture();
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let secret = format!("sk_live_{unique}");
        let passphrase = format!("pass-{unique}");
        let new_secret = format!("rotated_{unique}");
        let new_passphrase = format!("newpass-{unique}");

        let (_, token) = app.user_with_role("amina", "user").await;
        let created = app.post("/api/v1/keys", Some(&token), json!({
            "name": "k", "service": "s", "secret": secret, "passphrase": passphrase,
        })).await;
        created.assert(201);
        let id = created.body["id"].as_str().unwrap().to_owned();
        let revealed = app.post(&format!("/api/v1/keys/{id}/reveal"), Some(&token), json!({"passphrase": passphrase})).await;
        revealed.assert(200);
        assert_eq!(revealed.body["secret"], secret.as_str());
        app.post(&format!("/api/v1/keys/{id}/reveal"), Some(&token), json!({"passphrase": format!("{passphrase}x")})).await.assert(403);
        // Bad input that carries the secret and the passphrase.
        app.post("/api/v1/keys", Some(&token), json!({
            "name": "", "service": "s", "secret": secret, "passphrase": passphrase, "environment": "moon",
        })).await.assert(422);
        app.post(&format!("/api/v1/keys/{id}/rotate"), Some(&token), json!({
            "secret": new_secret, "passphrase": passphrase, "new_passphrase": new_passphrase,
        })).await.assert(200);
        let revealed = app.post(&format!("/api/v1/keys/{id}/reveal"), Some(&token), json!({"passphrase": new_passphrase})).await;
        assert_eq!(revealed.body["secret"], new_secret.as_str());

        let logs = captured();
        assert!(logs.contains("vault key revealed"), "the subscriber captured the app's logs");
        assert!(logs.contains("TRACE"), "captured at TRACE level");
        for needle in [&unique, &secret, &passphrase, &new_secret, &new_passphrase] {
            assert!(!logs.contains(needle.as_str()), "a secret value reached the logs");
        }
    }
}
