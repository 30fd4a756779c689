//! The `godata-bridge` binary: parses the command line and wires the library
//! together. Errors are reported here, once, with their causes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use godata_bridge::config::{Config, ProcessEnv};
use godata_bridge::sim::{self, Faults, Sim, SimConfig};
use godata_bridge::telemetry::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "godata-bridge",
    version,
    about = "Keeps a PostgreSQL HMIS and WHO Go.Data in sync, both ways"
)]
struct Cli {
    /// Log output format (default: json when stderr is not a terminal).
    #[arg(long, global = true, value_enum, env = "GODATA_BRIDGE_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Go.Data API emulator (a test bed and demo peer).
    Sim(SimArgs),
    /// Apply sql/install.sql to the HMIS and track the [[push]] tables.
    Install(InstallArgs),
    /// Deliver HMIS changes to Go.Data until SIGTERM/SIGINT.
    Run(ConfigArg),
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// The bridge configuration file.
    #[arg(
        long,
        short,
        default_value = "godata-bridge.toml",
        env = "GODATA_BRIDGE_CONFIG"
    )]
    config: PathBuf,
}

#[derive(Debug, clap::Args)]
struct InstallArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Print the SQL instead of applying it (for a DBA to review and run).
    #[arg(long)]
    print: bool,
}

#[derive(Debug, clap::Args)]
struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000", env = "GODATA_SIM_LISTEN")]
    listen: SocketAddr,
    /// A user as EMAIL:PASSWORD (repeatable); default: the built-in bridge user.
    #[arg(long = "user", value_name = "EMAIL:PASSWORD")]
    users: Vec<String>,
    /// Id of the outbreak every user has as active outbreak.
    #[arg(long, default_value = sim::DEFAULT_OUTBREAK_ID)]
    outbreak_id: String,
    /// The outbreak's case visualId mask.
    #[arg(long, default_value = sim::DEFAULT_CASE_ID_MASK)]
    case_id_mask: String,
    /// The outbreak's contact visualId mask.
    #[arg(long, default_value = sim::DEFAULT_CONTACT_ID_MASK)]
    contact_id_mask: String,
    /// JSON file with an array of Go.Data locations (default: built-in districts).
    #[arg(long)]
    locations: Option<PathBuf>,
    /// Idle token lifetime in seconds.
    #[arg(long, default_value_t = sim::DEFAULT_TOKEN_TTL_SECS)]
    token_ttl: i64,
    /// Milliseconds added to every API request.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Share (0..1) of API requests answered 503.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Share (0..1) of API requests answered 429.
    #[arg(long, default_value_t = 0.0)]
    rate_limit_rate: f64,
    /// Share (0..1) of API connections dropped before handling.
    #[arg(long, default_value_t = 0.0)]
    drop_rate: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format.unwrap_or_else(LogFormat::auto));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return report(&anyhow::Error::from(e)),
    };
    // Config is loaded and validated before anything runs; a bad one exits 2.
    let config = match &cli.command {
        Command::Install(InstallArgs { print: true, .. }) => None,
        Command::Install(InstallArgs { config, .. }) | Command::Run(config) => {
            match Config::load(&config.config, &ProcessEnv) {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        Command::Sim(_) => None,
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Sim(args) => run_sim(args).await,
            Command::Install(InstallArgs { print: true, .. }) => {
                print!("{}", godata_bridge::capture::install::INSTALL_SQL);
                Ok(())
            }
            Command::Install(_) => install(config.expect("loaded above")).await,
            Command::Run(_) => run(config.expect("loaded above")).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

/// Prints an error and its causes, once, at the edge.
fn report(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {e}");
    for cause in e.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    ExitCode::FAILURE
}

fn parse_user(s: &str) -> anyhow::Result<(String, String)> {
    match s.split_once(':') {
        Some((e, p)) if !e.is_empty() && !p.is_empty() => Ok((e.to_string(), p.to_string())),
        _ => anyhow::bail!(
            "--user takes EMAIL:PASSWORD, got `{}`",
            s.split(':').next().unwrap_or_default()
        ),
    }
}

async fn run_sim(args: SimArgs) -> anyhow::Result<()> {
    let users = if args.users.is_empty() {
        vec![(
            sim::DEFAULT_USER.to_string(),
            sim::DEFAULT_PASSWORD.to_string(),
        )]
    } else {
        args.users
            .iter()
            .map(|u| parse_user(u))
            .collect::<anyhow::Result<_>>()?
    };
    let locations = args
        .locations
        .as_deref()
        .map(sim::read_locations)
        .transpose()?;
    let config = SimConfig {
        listen: args.listen,
        users: users.clone(),
        outbreak_id: args.outbreak_id.clone(),
        case_id_mask: args.case_id_mask,
        contact_id_mask: args.contact_id_mask,
        locations,
        token_ttl_secs: args.token_ttl,
        faults: Faults {
            latency_ms: args.latency_ms,
            error_rate: args.error_rate,
            rate_limit_rate: args.rate_limit_rate,
            drop_rate: args.drop_rate,
            ..Faults::default()
        },
    };
    let server = Sim::start(config).await?;
    println!("Go.Data emulator listening on {}/api", server.url());
    for (email, password) in &users {
        if email == sim::DEFAULT_USER && password == sim::DEFAULT_PASSWORD {
            println!("  user {email} (password: {password})");
        } else {
            println!("  user {email}");
        }
    }
    println!("  active outbreak {}", args.outbreak_id);
    println!(
        "  control routes under {}/__sim/ (state, reset, faults, expire-tokens, requests)",
        server.url()
    );
    tracing::info!(addr = %server.addr(), "sim started");
    tokio::signal::ctrl_c().await?;
    tracing::info!("sim stopping");
    Ok(())
}

async fn connect_hmis(config: &Config) -> anyhow::Result<tokio_postgres::Client> {
    let pg: tokio_postgres::Config = config
        .hmis
        .database_url
        .expose()
        .parse()
        .map_err(|_| anyhow::anyhow!("the HMIS database URL is not a valid libpq URL"))?;
    let (client, conn) = pg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "hmis connection ended");
        }
    });
    Ok(client)
}

async fn install(config: Config) -> anyhow::Result<()> {
    use godata_bridge::capture::install;
    let mut client = connect_hmis(&config).await?;
    install::install(&mut client).await?;
    for p in &config.push {
        let (schema, table) = p.schema_table().expect("validated");
        install::track(&client, schema, table, &p.key).await?;
        tracing::info!(table = %p.table, "tracking");
    }
    println!(
        "installed godata_bridge schema v{} and tracked {} table(s)",
        install::SCHEMA_VERSION,
        config.push.len()
    );
    Ok(())
}

async fn run(config: Config) -> anyhow::Result<()> {
    use godata_bridge::deliver::{self, Deliverer};
    use godata_bridge::godata::client::Client;
    let db: tokio_postgres::Config = config
        .hmis
        .database_url
        .expose()
        .parse()
        .map_err(|_| anyhow::anyhow!("the HMIS database URL is not a valid libpq URL"))?;
    let g = &config.godata;
    let client = Client::new(
        g.url.as_deref().expect("validated"),
        g.user.as_deref().expect("validated"),
        g.password.clone(),
        g.outbreak_id.as_deref().expect("validated"),
        std::time::Duration::from_secs(g.request_timeout_secs),
    );
    // A wrong outbreak or account is for an operator; an unreachable
    // Go.Data is not (changes wait in the outbox).
    match client.check_outbreak_access().await {
        Ok(()) => tracing::info!("go.data account can write to the outbreak"),
        Err(godata_bridge::godata::client::AccessProblem::Godata(e))
            if e.disposition() == godata_bridge::godata::client::Disposition::Retry =>
        {
            tracing::warn!(error = %e, "go.data not reachable yet; changes wait in the outbox")
        }
        Err(e) => return Err(e.into()),
    }
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(deliver::run(Deliverer::new(config, client), db, rx));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    let _ = stop.send(true);
    let _ = task.await;
    Ok(())
}
