//! `herald`: serve the gateway (the default), or mint a token.

use std::time::Duration;

use anyhow::Context;
use clap::{Args as _, CommandFactory, FromArgMatches, Parser, Subcommand};
use herald_auth::{Signer, TokenSpec};
use herald_server::{App, Config};

/// Herald: a self-hosted real-time notification and messaging gateway.
///
/// With no subcommand, `herald` serves (same as `herald serve`). See `herald token --help`
/// for minting development tokens.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve plain WebSocket, Socket.IO, SSE and the HTTP API on one port (the default).
    Serve(Box<Config>),
    /// Run only the outbox worker (PostgreSQL, Redis): takes notification events from the
    /// database, enriches, stores and publishes them; serves /health, /ready, /metrics and
    /// the outbox API on PORT. Same settings as serve.
    Worker(Box<Config>),
    /// Print a JWT signed with the configured key (JWT_SECRET, or --private-key).
    Token(TokenArgs),
    /// Ask the Herald on this host whether it is alive (GET /health); exit 0 only for a
    /// 200 answer. For container health checks (the image has no shell or curl).
    Health(HealthArgs),
}

#[derive(Debug, clap::Args)]
struct HealthArgs {
    /// Address Herald listens on; 0.0.0.0 and :: mean this host's loopback.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    #[arg(long, env = "PORT", default_value_t = 8080)]
    port: u16,
    /// The path to ask, e.g. /ready.
    #[arg(long, default_value = "/health")]
    path: String,
    /// How long to wait for the answer, e.g. 3s.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// The user id (`sub` claim).
    #[arg(long)]
    sub: String,
    /// Comma-separated roles, e.g. `admin`.
    #[arg(long, value_delimiter = ',')]
    roles: Vec<String>,
    /// Lifetime, e.g. `1h`, `30m`, `7d`.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    ttl: Duration,
    /// Display name claim.
    #[arg(long)]
    name: Option<String>,
    /// Device id claim.
    #[arg(long)]
    device: Option<String>,
    /// HMAC secret (HS256).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// PEM private key file (RS256 or ES256) instead of the secret.
    #[arg(long, env = "JWT_PRIVATE_KEY")]
    private_key: Option<std::path::PathBuf>,
    /// `iss` claim.
    #[arg(long, env = "JWT_ISSUER")]
    issuer: Option<String>,
    /// `aud` claim.
    #[arg(long, env = "JWT_AUDIENCE")]
    audience: Option<String>,
}

/// Parses `90s`, `30m`, `1h`, `7d` or a plain number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let value: u64 =
        number.parse().map_err(|_| format!("invalid duration {text:?}: expected e.g. 90s, 30m, 1h, 7d"))?;
    let seconds = match unit {
        "" | "s" => value,
        "m" => value * 60,
        "h" => value * 3600,
        "d" => value * 86_400,
        _ => return Err(format!("invalid duration unit in {text:?}: use s, m, h or d")),
    };
    Ok(Duration::from_secs(seconds))
}

/// `herald` and `herald --port 1` mean `herald serve ...`.
fn normalised_args() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let first = args.get(1).and_then(|a| a.to_str()).map(str::to_owned);
    let is_subcommand =
        matches!(first.as_deref(), Some("serve" | "worker" | "token" | "health" | "help" | "-V" | "--version"));
    if !is_subcommand {
        args.insert(1, "serve".into());
    }
    args
}

/// Parses the command line, applying a `--config`/`HERALD_CONFIG` TOML file as defaults.
fn parse_cli() -> anyhow::Result<Cli> {
    let args = normalised_args();
    let first_pass = Cli::try_parse_from(&args).unwrap_or_else(|error| error.exit());
    let config_path = match &first_pass.command {
        Command::Serve(config) | Command::Worker(config) => config.config.clone(),
        Command::Token(_) | Command::Health(_) => None,
    };
    let Some(path) = config_path else { return Ok(first_pass) };
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read config file {}", path.display()))?;
    let command = Cli::command();
    let command = ["serve", "worker"].into_iter().fold(command, |command, name| {
        command
            .mut_subcommand(name, |sub| herald_server::config::apply_toml_defaults(sub.clone(), &text).unwrap_or(sub))
    });
    // Validate the file separately so a bad key is reported rather than ignored.
    herald_server::config::apply_toml_defaults(Config::augment_args(clap::Command::new("serve")), &text)
        .map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
    let matches = command.try_get_matches_from(&args).unwrap_or_else(|error| error.exit());
    Ok(Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit()))
}

fn main() -> anyhow::Result<()> {
    let cli = parse_cli()?;
    match cli.command {
        Command::Token(args) => token(args),
        Command::Health(args) => health(&args),
        Command::Serve(config) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(serve(*config, false))
        }
        Command::Worker(config) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(serve(*config, true))
        }
    }
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let signer = match (&args.private_key, &args.secret) {
        (Some(path), _) => {
            let pem = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            Signer::private_key_pem(&pem)?
        }
        (None, Some(secret)) => Signer::secret(secret.as_bytes()),
        (None, None) => match std::env::var("NEXTAUTH_SECRET") {
            Ok(secret) if !secret.is_empty() => Signer::secret(secret.as_bytes()),
            _ => anyhow::bail!("no signing key: set JWT_SECRET (or NEXTAUTH_SECRET), --secret or --private-key"),
        },
    };
    let mut spec = TokenSpec::new(args.sub);
    spec.roles = args.roles;
    spec.ttl = Some(args.ttl);
    spec.name = args.name;
    spec.device = args.device;
    spec.issuer = args.issuer;
    spec.audience = args.audience;
    println!("{}", signer.mint(&spec)?);
    Ok(())
}

/// One HTTP/1.0 GET over loopback; an answer other than 200 is an error (exit code 1).
fn health(args: &HealthArgs) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let host = match args.host {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        host => host,
    };
    let address = std::net::SocketAddr::new(host, args.port);
    let mut stream = std::net::TcpStream::connect_timeout(&address, args.timeout)
        .with_context(|| format!("cannot connect to {address}"))?;
    stream.set_read_timeout(Some(args.timeout))?;
    stream.set_write_timeout(Some(args.timeout))?;
    write!(stream, "GET {} HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n", args.path)?;
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < head.len() {
        match stream.read(&mut head[read..])? {
            0 => break,
            n => read += n,
        }
        if head[..read].contains(&b'\n') {
            break;
        }
    }
    let status_line = String::from_utf8_lossy(&head[..read]);
    let status_line = status_line.lines().next().unwrap_or_default();
    anyhow::ensure!(
        status_line.split_whitespace().nth(1) == Some("200"),
        "{address}{} answered {status_line:?}",
        args.path
    );
    println!("{address}{}: {status_line}", args.path);
    Ok(())
}

async fn serve(config: Config, worker: bool) -> anyhow::Result<()> {
    let (settings, generated) = if worker { config.resolve_worker()? } else { config.resolve()? };
    herald_server::telemetry::init_logging(&config.log_level, settings.json_logs);
    let app = App::bind(settings).await?;
    let address = app.local_addr()?;
    if generated.jwt_secret.is_some() || generated.api_key.is_some() {
        print_development_banner(&generated, address.port())?;
    }
    let running = app.spawn()?;
    wait_for_signal().await;
    tracing::info!("signal received");
    running.shutdown();
    running.wait().await?;
    tracing::info!("stopped");
    Ok(())
}

fn print_development_banner(generated: &herald_server::config::Generated, port: u16) -> anyhow::Result<()> {
    let mut lines =
        vec!["Herald is running in DEVELOPMENT mode with generated secrets (never use them in production).".to_owned()];
    if let Some(secret) = &generated.jwt_secret {
        let token =
            Signer::secret(secret.as_bytes()).mint(&TokenSpec::new("dev-user").ttl(Duration::from_secs(86_400)))?;
        lines.push(format!("  JWT_SECRET={secret}"));
        lines.push(format!("  token for user dev-user (24h): {token}"));
        lines.push(format!("  connect: ws://127.0.0.1:{port}/ws?token={token}"));
        lines.push(format!("  listen:  curl -N 'http://127.0.0.1:{port}/events?token={token}'"));
    }
    if let Some(api_key) = &generated.api_key {
        lines.push(format!("  HERALD_API_KEY={api_key}"));
        lines.push(format!(
            "  publish: curl -X POST http://127.0.0.1:{port}/api/publish -H 'Authorization: Bearer {api_key}' -H 'Content-Type: application/json' -d '{{\"topic\":\"user:dev-user\",\"event\":\"notification\",\"data\":{{\"message\":\"hello\"}}}}'"
        ));
    }
    println!("{}", lines.join("\n"));
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("h").is_err());
    }
}
