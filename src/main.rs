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
    /// Create an admin account. The password is read from stdin with --password-stdin,
    /// else from ADMIN_PASSWORD.
    /// Fill the database with realistic demo data (users, claims, verdicts, articles).
    DemoData(hakikisha::demo::DemoOptions),
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
    let cli = Cli::parse();
    let config = Config::from_env()?;
    telemetry::init_tracing(config.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let listener = tokio::net::TcpListener::bind(config.bind_addr)
                .await
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
