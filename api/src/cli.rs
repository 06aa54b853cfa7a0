//! The `hap` command line.

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use std::sync::Arc;

use eventstore::{EventStore, Publisher, PublisherSettings, wakeup};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use projections::consumer::{self, ConsumerSettings};
use projections::ReadModel;

use crate::config::{Role, ServeSettings, Settings};
use crate::routing::DomainRouter;
use crate::{AppState, db, router};

#[derive(Debug, Parser)]
#[command(
    name = "hap",
    version,
    about = "Event-sourced clinic scheduling backend"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (creates the database and applies migrations first).
    Serve(ServeSettings),
    /// Create the database if needed, apply migrations and exit.
    Migrate,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(serve_settings) => serve(cli.settings, serve_settings).await,
        Command::Migrate => {
            let pool = db::connect(&cli.settings.database_url, 2, true).await?;
            db::migrate(&pool).await?;
            println!(
                "migrations applied to {}",
                redact(&cli.settings.database_url)
            );
            Ok(())
        }
    }
}

async fn serve(settings: Settings, serve: ServeSettings) -> anyhow::Result<()> {
    let pool = db::connect(
        &settings.database_url,
        settings.db_pool_size,
        !serve.no_migrate,
    )
    .await?;
    if !serve.no_migrate {
        db::migrate(&pool).await?;
    }
    let listener = TcpListener::bind(serve.http_addr)
        .await
        .with_context(|| format!("Failed to listen on {}", serve.http_addr))?;
    let address = listener.local_addr()?;
    let store = EventStore::new(pool);
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let commands = serve.roles.contains(&Role::Command);
    if commands {
        // Wakes publishers in other processes after this one's appends.
        tasks.spawn(wakeup::forward_appends(store.clone(), shutdown.clone()));
    }
    if serve.roles.contains(&Role::Publisher) {
        let publisher = Publisher::new(
            store.clone(),
            Arc::new(DomainRouter),
            PublisherSettings::new(&settings.amqp_url, &settings.exchange_prefix),
        );
        tasks.spawn(publisher.run(shutdown.clone()));
    }
    let read = read_model(&settings, !serve.no_migrate).await?;
    if serve.roles.contains(&Role::Projector) {
        let consumers = ConsumerSettings::new(
            &settings.amqp_url,
            &settings.exchange_prefix,
            &settings.instance,
            settings.max_retries,
        );
        tasks.spawn(consumer::run_all(
            read.clone(),
            store.clone(),
            consumers,
            shutdown.clone(),
        ));
    }
    let app = AppState::new(store, read, settings);
    tracing::info!(%address, roles = ?serve.roles, "HAP is listening");
    let stopping = shutdown.clone();
    let served = axum::serve(listener, router(app, commands))
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            stopping.cancel();
        })
        .await;
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    served.context("The HTTP server failed")
}

/// This instance's read model: its schema on the read database, migrated unless told not to.
async fn read_model(settings: &Settings, migrate: bool) -> anyhow::Result<ReadModel> {
    let url = settings
        .read_database_url
        .as_deref()
        .unwrap_or(&settings.database_url);
    let schema = projections::schema::schema_name(&settings.instance);
    let pool = projections::schema::connect(url, &schema, settings.db_pool_size)
        .await
        .with_context(|| format!("Failed to connect to the read model (schema {schema})"))?;
    if migrate {
        projections::schema::migrate(&pool)
            .await
            .with_context(|| format!("Failed to migrate the read model (schema {schema})"))?;
    }
    Ok(ReadModel {
        pool,
        progress: Default::default(),
    })
}

/// Resolves on Ctrl-C or SIGTERM, so that in-flight requests finish before the process ends.
async fn shutdown_signal() {
    let ctrl_c = async {
        tokio::signal::ctrl_c().await.ok();
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}
