//! The `wedsync` binary: `serve` (the default), `token`, and `doc` admin tools.
//!
//! Thin by design: it parses flags (flags > env > config file > defaults), sets up logging,
//! and calls the library. `anyhow` lives only here, at the binary's edge.
//!
//! Exit status: 0 on success, 2 for a usage error (what clap reports itself, and arguments or
//! configuration that parse but make no sense), 1 for any other failure. Errors are printed as
//! one `error: ...` line with their causes, never with a backtrace.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use wedsync::auth::{mint_hs256, unix_now, AuthError, TokenSpec};
use wedsync::config::{
    AuthSettings, ClusterSettings, Config, ConfigError, ConfigFile, Durability, Limits,
    DEFAULT_DATA_DIR, DEFAULT_LISTEN,
};
use wedsync::store::{admin, SledStore, StoreError};
use wedsync::Server;

#[derive(Parser)]
#[command(
    name = "wedsync",
    version,
    about = "Real-time collaboration server for wedding plans"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default command).
    Serve(ServeArgs),
    /// Print a signed HS256 token (development and tests).
    Token(TokenArgs),
    /// Inspect and maintain a stopped server's data directory.
    #[command(subcommand)]
    Doc(DocCommand),
}

#[derive(Args, Default)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:1234].
    #[arg(long, env = "WEDSYNC_LISTEN")]
    listen: Option<String>,
    /// Data directory (sled) [default: ./data].
    #[arg(long, env = "WEDSYNC_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// HS256 shared secret for JWTs.
    #[arg(long, env = "WEDSYNC_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// PEM public key file for JWTs (RS256, ES256 or EdDSA).
    #[arg(long, env = "WEDSYNC_JWT_PUBLIC_KEY")]
    jwt_public_key: Option<PathBuf>,
    /// Required `iss` claim.
    #[arg(long, env = "WEDSYNC_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Required `aud` claim.
    #[arg(long, env = "WEDSYNC_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// Allow open development mode (no JWT key) on a non-loopback address.
    #[arg(long, env = "WEDSYNC_INSECURE_OPEN")]
    insecure_open: bool,
    /// strict: relay after fsync (default); relaxed: relay before it.
    #[arg(long, env = "WEDSYNC_DURABILITY", value_enum)]
    durability: Option<Durability>,
    /// TOML config file for everything else (limits, ...).
    #[arg(long, env = "WEDSYNC_CONFIG")]
    config: Option<PathBuf>,
    /// Cluster mode: share rooms with other nodes through this Redis (needs --node-id).
    #[arg(long = "redis", env = "WEDSYNC_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// This node's unique name in the cluster (needs --redis).
    #[arg(long, env = "WEDSYNC_NODE_ID")]
    node_id: Option<String>,
}

#[derive(Args)]
struct TokenArgs {
    /// HS256 secret (the server's --jwt-secret).
    #[arg(long, env = "WEDSYNC_JWT_SECRET", hide_env_values = true)]
    secret: String,
    /// User id (`sub`).
    #[arg(long)]
    sub: String,
    #[arg(long)]
    name: Option<String>,
    /// couple | planner | vendor | guest | admin
    #[arg(long)]
    role: Option<String>,
    /// `ID:edit` or `ID:view`; repeat for several weddings.
    #[arg(long = "wedding")]
    weddings: Vec<String>,
    /// Lifetime: 45s, 30m, 1h, 2d [default: 1h].
    #[arg(long)]
    ttl: Option<String>,
    #[arg(long)]
    jti: Option<String>,
    #[arg(long)]
    iss: Option<String>,
    #[arg(long)]
    aud: Option<String>,
}

#[derive(Subcommand)]
enum DocCommand {
    /// List stored documents.
    List(DataDir),
    /// Write a document as one binary Yjs update.
    Export {
        doc: String,
        /// Output file [default: stdout].
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        dir: DataDir,
    },
    /// Append a binary Yjs update file to a document.
    Import {
        doc: String,
        file: PathBuf,
        #[command(flatten)]
        dir: DataDir,
    },
    /// Fold the update log into a snapshot (one document, or every document).
    Compact {
        doc: Option<String>,
        #[command(flatten)]
        dir: DataDir,
    },
    /// Sizes, log length and state vector of a document, as JSON.
    Inspect {
        doc: String,
        #[command(flatten)]
        dir: DataDir,
    },
}

#[derive(Args)]
struct DataDir {
    /// Data directory of a stopped server [default: ./data].
    #[arg(long, env = "WEDSYNC_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
}

/// Exit status for usage errors, the one clap uses for the errors it finds itself.
const EXIT_USAGE: u8 = 2;

/// An argument that parsed but cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => serve(args),
        Command::Token(args) => token(args),
        Command::Doc(cmd) => doc(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            if is_usage_error(&e) {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Whether `e` comes from the command line or configuration rather than from running.
fn is_usage_error(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.is::<UsageError>()
            || cause.is::<ConfigError>()
            || matches!(
                cause.downcast_ref::<AuthError>(),
                Some(AuthError::InvalidArgument(_))
            )
    })
}

fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: log files and pipes get plain text (NO_COLOR also turns
    // them off).
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

/// flags > env (both through clap) > config file > defaults.
fn resolve_config(args: ServeArgs) -> anyhow::Result<Config> {
    let file = match &args.config {
        Some(path) => ConfigFile::read(path)?,
        None => ConfigFile::default(),
    };
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    let auth = AuthSettings {
        jwt_secret: args.jwt_secret.or(file.auth.jwt_secret),
        jwt_public_key: args.jwt_public_key.or(file.auth.jwt_public_key),
        jwt_issuer: args.jwt_issuer.or(file.auth.jwt_issuer),
        jwt_audience: args.jwt_audience.or(file.auth.jwt_audience),
        jwt_leeway_secs: file.auth.jwt_leeway_secs,
    };
    let tuning = file.cluster.unwrap_or_default();
    let cluster = match (
        args.redis_url.or(tuning.redis_url.clone()),
        args.node_id.or(tuning.node_id.clone()),
    ) {
        (None, None) => None,
        (Some(redis_url), Some(node_id)) => Some(ClusterSettings {
            redis_url,
            node_id,
            tuning,
        }),
        (Some(_), None) => {
            return Err(UsageError("--redis needs --node-id (cluster mode)".into()).into())
        }
        (None, Some(_)) => {
            return Err(UsageError("--node-id needs --redis (cluster mode)".into()).into())
        }
    };
    let config = Config {
        listen: Config::parse_listen(&listen)?,
        data_dir: args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        auth,
        insecure_open: args.insecure_open || file.insecure_open.unwrap_or(false),
        durability: args.durability.or(file.durability).unwrap_or_default(),
        limits: file.limits.unwrap_or_else(Limits::default),
        cluster,
    };
    config.validate()?;
    Ok(config)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging();
    let config = resolve_config(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let server = Server::start(config).await?;
        shutdown_signal().await;
        server.shutdown().await?;
        Ok::<(), anyhow::Error>(())
    })?;
    // Runtime drop waits for blocking tasks (a sled flush in progress) to finish.
    runtime.shutdown_timeout(Duration::from_secs(10));
    Ok(())
}

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
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    if args.secret.is_empty() {
        return Err(UsageError("--secret must not be empty".into()).into());
    }
    let spec = TokenSpec {
        sub: args.sub,
        name: args.name,
        role: args.role,
        weddings: args.weddings,
        ttl: args.ttl,
        jti: args.jti,
        issuer: args.iss,
        audience: args.aud,
    };
    let claims = spec.to_claims(unix_now())?;
    let token = mint_hs256(&args.secret, &claims)?;
    writeln!(std::io::stdout(), "{token}")?;
    Ok(())
}

fn open_store(dir: &DataDir) -> anyhow::Result<Arc<SledStore>> {
    match SledStore::open(&dir.data_dir, Duration::from_secs(20)) {
        Ok(s) => Ok(Arc::new(s)),
        Err(StoreError::Locked(_)) => bail!(
            "the data directory {} is in use by a running wedsync server; stop it first \
             (or use the HTTP API: GET/POST /api/docs/{{doc}}/update)",
            dir.data_dir.display()
        ),
        Err(e) => Err(e.into()),
    }
}

fn doc(cmd: DocCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        DocCommand::List(dir) => {
            let store = open_store(&dir)?;
            for name in admin::list(store.as_ref())? {
                writeln!(out, "{name}")?;
            }
        }
        DocCommand::Export {
            doc,
            out: file,
            dir,
        } => {
            let store = open_store(&dir)?;
            let bytes = admin::export(store.as_ref(), &doc)?;
            match file {
                Some(path) => std::fs::write(&path, &bytes)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => out.write_all(&bytes)?,
            }
        }
        DocCommand::Import { doc, file, dir } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let store = open_store(&dir)?;
            let seq = admin::import(store.as_ref(), &doc, &bytes)?;
            writeln!(
                out,
                "{}",
                serde_json::json!({"doc": doc, "stored_seq": seq})
            )?;
        }
        DocCommand::Compact { doc, dir } => {
            let store = open_store(&dir)?;
            let report = match doc {
                Some(doc) => serde_json::to_value(admin::compact(store.as_ref(), &doc)?)?,
                None => serde_json::to_value(admin::compact_all(store.as_ref(), None)?)?,
            };
            writeln!(out, "{report}")?;
        }
        DocCommand::Inspect { doc, dir } => {
            let store = open_store(&dir)?;
            let info = admin::inspect(store.as_ref(), &doc)?;
            writeln!(out, "{}", serde_json::to_string_pretty(&info)?)?;
        }
    }
    Ok(())
}
