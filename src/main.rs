use std::io::Read;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hakikisha::{App, config::Config, telemetry};
use secrecy::SecretString;

/// Hakikisha: fact-checking platform and API-key vault backend.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API, dashboard and metrics (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Fill the database with realistic demo data (users, claims, verdicts, articles).
    DemoData(hakikisha::demo::DemoOptions),
    /// Run one background job now, in the foreground, and record it like any run (exit code 1
    /// unless it succeeded). Takes the same cross-instance lock as the scheduler.
    RunJob {
        /// Job name, e.g. daily_report (see `GET /api/v1/admin/jobs` or docs/jobs.md).
        name: String,
    },
    /// Create an admin account. The password is read from stdin with --password-stdin,
    /// else from ADMIN_PASSWORD.
    CreateAdmin {
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "admin")]
        username: String,
        #[arg(long)]
        password_stdin: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tune_allocator();
    let cli = Cli::parse();
    let config = Config::from_env()?;
    let logs = telemetry::init_tracing(config.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let listener = hakikisha::http::server::listen(config.bind_addr)
                .with_context(|| format!("cannot bind BIND_ADDR {}", config.bind_addr))?;
            hakikisha::run(config, listener, shutdown_signal()).await
        }
        Command::Migrate => {
            let db = hakikisha::db::Db::connect(&config).await?;
            db.migrate(config.db_connect_timeout).await?;
            tracing::info!(database = db.kind(), "migrations applied");
            Ok(())
        }
        Command::DemoData(options) => {
            let app = App::build(config).await?;
            hakikisha::demo::run(&app.state, &options).await?;
            app.state.db.close().await;
            Ok(())
        }
        Command::RunJob { name } => {
            let app = App::build(config).await?;
            let state = &app.state;
            let result = state
                .jobs
                .run_job(
                    state,
                    &name,
                    chrono::Utc::now(),
                    hakikisha::jobs::Trigger::Manual,
                )
                .await;
            state.db.close().await;
            let run = result?;
            println!(
                "{}: {} in {:.3} s, {} items{}",
                run.job,
                run.status,
                run.duration_seconds().unwrap_or_default(),
                run.items,
                run.error.map(|e| format!(" ({e})")).unwrap_or_default()
            );
            if run.status != "ok" {
                drop(logs);
                std::process::exit(1);
            }
            Ok(())
        }
        Command::CreateAdmin {
            email,
            username,
            password_stdin,
        } => {
            let password = if password_stdin {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                SecretString::from(s.trim_end_matches(['\n', '\r']).to_owned())
            } else {
                config.admin_password.clone().context(
                    "give the password on stdin with --password-stdin or in ADMIN_PASSWORD",
                )?
            };
            let app = App::build(config).await?;
            let user = hakikisha::create_admin(&app.state, &email, &username, password).await?;
            tracing::info!(user_id = %user.id, username = %user.username, "admin account created");
            Ok(())
        }
    }
}

/// Every Argon2id hash allocates `PASSWORD_HASH_MEMORY_KIB` (19 MiB by default). glibc raises its
/// mmap threshold after the first such block is freed and then keeps later blocks in per-thread
/// arenas, so idle memory grew by ~19 MiB per thread that ever hashed. A fixed threshold keeps
/// large blocks mmapped, so they return to the system when freed.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called once before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}
