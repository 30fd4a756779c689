//! The `godata-bridge` binary: parses the command line and wires the library
//! together. Errors are reported here, once, with their causes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use godata_bridge::commands::{self, DeadLetterAction};
use godata_bridge::config::{Config, ProcessEnv};
use godata_bridge::telemetry::{self, LogFormat};
use godata_sim::{self as sim, Faults, Sim, SimConfig};

#[derive(Debug, Parser)]
#[command(
    name = "godata-bridge",
    version,
    about = "Keeps a PostgreSQL HMIS and WHO Go.Data in sync, both ways"
)]
struct Cli {
    /// Do not verify Go.Data's TLS certificate (logs a loud warning; use
    /// `godata.ca_file` instead).
    #[arg(long, global = true)]
    insecure_skip_verify: bool,
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
    /// Remove everything `install` created: triggers, the godata_bridge
    /// schema, and in logical mode the slot, publication and origin.
    Uninstall {
        #[command(flatten)]
        config: ConfigArg,
        /// Uninstall even though changes are still waiting in the outbox.
        #[arg(long)]
        force: bool,
    },
    /// Sync both ways until SIGTERM/SIGINT: deliver HMIS changes to Go.Data,
    /// pull Go.Data changes into the HMIS.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Where /healthz, /readyz and /metrics are served.
        #[arg(
            long,
            default_value = "127.0.0.1:9187",
            env = "GODATA_BRIDGE_HTTP_LISTEN"
        )]
        http_listen: SocketAddr,
        /// When Go.Data refuses the login at start, keep running (not
        /// ready, logging in again only as the login backoff allows)
        /// instead of exiting 2: for supervisors that restart whatever the
        /// exit code (Kubernetes), where each restart would be one more
        /// refused login toward the account's lockout.
        #[arg(long, env = "GODATA_BRIDGE_KEEP_RUNNING_ON_REFUSED_LOGIN")]
        keep_running_on_refused_login: bool,
    },
    /// Outbox depth, oldest pending change, dead letters, last delivery.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List, retry or discard changes Go.Data refused.
    DeadLetter {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        action: DeadLetterCmd,
    },
    /// Enqueue the existing rows of the [[push]] tables (first deployment).
    Backfill {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this table (`schema.table`); default: every [[push]] table.
        #[arg(long)]
        table: Option<String>,
        /// Rows per transaction.
        #[arg(long, default_value_t = 1000)]
        chunk: i32,
    },
    /// Check config, database catalog, Go.Data login and outbreak access.
    Check(ConfigArg),
    /// Compare the HMIS with Go.Data, both ways: exit 0 in sync, 1 drift
    /// found (after --repair: drift left), 2 error.
    Reconcile {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this table (a [[push]] or [[pull.target]] table).
        #[arg(long)]
        table: Option<String>,
        #[arg(long, value_enum, default_value = "both")]
        direction: godata_bridge::reconcile::Direction,
        /// Enqueue the push keys that differ (the running bridge delivers
        /// them), pull the records that differ again, then compare again.
        #[arg(long)]
        repair: bool,
        /// Example keys shown per category.
        #[arg(long, default_value_t = 10)]
        examples: usize,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print the FHIR R4 Bundle one Go.Data case becomes.
    Fhir {
        #[command(flatten)]
        config: ConfigArg,
        /// The Go.Data case id.
        case_id: String,
    },
    /// Measure latency, throughput, capture overhead, capture WAL, update size, write-back, backlog and reconcile (see docs/benchmarks.md).
    Bench {
        /// One scenario (latency, throughput, capture-overhead, capture-wal, update-size, writeback, backlog, reconcile, lab-results), or all.
        #[arg(long, default_value = "all")]
        scenario: String,
        /// A short smoke run.
        #[arg(long)]
        quick: bool,
        /// Also write the rows as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// The whole flow on a throwaway PostgreSQL and the emulator; runs until Ctrl-C.
    Demo {
        /// Use this database instead of a throwaway cluster (it gets the `hmis` schema).
        #[arg(long, env = "GODATA_BRIDGE_DATABASE_URL")]
        database_url: Option<String>,
        /// Where the emulator listens (any free port if taken).
        #[arg(long, default_value = "127.0.0.1:8000")]
        godata_listen: SocketAddr,
    },
}

#[derive(Debug, Subcommand)]
enum DeadLetterCmd {
    /// Show dead letters of both directions: HMIS changes Go.Data refused
    /// (push; ids, keys, status, Go.Data code, reason) and Go.Data records
    /// a write-back target refused (pull; Go.Data id, SQLSTATE, constraint,
    /// column). Never values.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Push dead letters go back into the outbox; pull dead letters are
    /// read from Go.Data again by the running bridge at its next poll.
    Retry {
        /// Dead-letter ids as `list` shows them: `17` (push) or `pull:3`.
        ids: Vec<String>,
        /// Every dead letter, both directions.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Push dead letters parked as possible duplicates: create the
        /// record anyway (the duplicate check is not asked again).
        #[arg(long)]
        create: bool,
    },
    /// Adopt an existing Go.Data record for a push dead letter parked as a
    /// possible duplicate: the HMIS row is linked to it and the change is
    /// sent there.
    Link {
        /// The push dead letter's id.
        id: i64,
        /// The Go.Data record to adopt.
        #[arg(long)]
        to: uuid::Uuid,
    },
    /// Delete dead letters for good (a pull dead letter's record is written
    /// when Go.Data changes it again).
    Discard {
        /// Dead-letter ids as `list` shows them: `17` (push) or `pull:3`.
        ids: Vec<String>,
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// The bridge configuration file.
    /// Global: also accepted after a nested subcommand
    /// (`dead-letter list --config F`).
    #[arg(
        long,
        short,
        global = true,
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
    /// Create (if missing) this LOGIN role and grant it exactly what the
    /// bridge needs; set its password yourself.
    #[arg(long)]
    role: Option<String>,
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

/// The process environment, with placeholders for the secrets a command
/// that connects to nothing does not use.
struct SecretsNotNeeded;

impl godata_bridge::config::Env for SecretsNotNeeded {
    fn var(&self, name: &str) -> Option<String> {
        ProcessEnv.var(name).or_else(|| match name {
            "GODATA_BRIDGE_DATABASE_URL" => Some("postgres://unused@localhost/unused".into()),
            "GODATA_BRIDGE_GODATA_PASSWORD" => Some("unused".into()),
            _ => None,
        })
    }
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
    let config_arg = match &cli.command {
        Command::Sim(_)
        | Command::Demo { .. }
        | Command::Completions { .. }
        | Command::Bench { .. } => None,
        Command::Install(InstallArgs { config, .. })
        | Command::Run { config, .. }
        | Command::Uninstall { config, .. }
        | Command::Check(config)
        | Command::Status { config, .. }
        | Command::DeadLetter { config, .. }
        | Command::Backfill { config, .. }
        | Command::Reconcile { config, .. }
        | Command::Fhir { config, .. } => Some(config.config.clone()),
    };
    // `install --print` connects to nothing: its secrets may be unset.
    let printing = matches!(
        &cli.command,
        Command::Install(InstallArgs { print: true, .. })
    );
    let env: &dyn godata_bridge::config::Env = if printing {
        &SecretsNotNeeded
    } else {
        &ProcessEnv
    };
    let config = match &config_arg {
        None => None,
        Some(path) => match Config::load(path, env) {
            Ok(mut c) => {
                c.godata.insecure_skip_verify = cli.insecure_skip_verify;
                Some(c)
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let file = config_arg
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let result = rt.block_on(async {
        let cfg = || config.as_ref().expect("loaded above");
        match cli.command {
            Command::Sim(args) => run_sim(args).await,
            Command::Install(InstallArgs {
                print: true, role, ..
            }) => {
                let config = config.expect("install names a config");
                print!(
                    "{}",
                    godata_bridge::capture::script::install_script(&config, role.as_deref())
                );
                Ok(())
            }
            Command::Install(InstallArgs { role, .. }) => {
                commands::install(cfg(), &file, role.as_deref()).await
            }
            Command::Uninstall { force, .. } => commands::uninstall(cfg(), force).await,
            Command::Run {
                http_listen,
                keep_running_on_refused_login,
                ..
            } => {
                commands::run(
                    config.clone().expect("loaded above"),
                    &file,
                    http_listen,
                    keep_running_on_refused_login,
                )
                .await
            }
            Command::Status { json, .. } => commands::status(cfg(), json).await,
            Command::DeadLetter { action, .. } => {
                let action = match action {
                    DeadLetterCmd::List { json } => DeadLetterAction::List { json },
                    DeadLetterCmd::Retry { ids, all, .. } | DeadLetterCmd::Discard { ids, all }
                        if ids.is_empty() && !all =>
                    {
                        return Err(anyhow::anyhow!("name the dead-letter ids, or pass --all"));
                    }
                    DeadLetterCmd::Retry { ids, create, .. } => {
                        let ids = commands::DeadLetterIds::parse(&ids)?;
                        if create {
                            DeadLetterAction::Create(ids)
                        } else {
                            DeadLetterAction::Retry(ids)
                        }
                    }
                    DeadLetterCmd::Link { id, to } => DeadLetterAction::Link { id, to },
                    DeadLetterCmd::Discard { ids, .. } => {
                        DeadLetterAction::Discard(commands::DeadLetterIds::parse(&ids)?)
                    }
                };
                commands::dead_letter(cfg(), action).await
            }
            Command::Backfill { table, chunk, .. } => {
                commands::backfill(cfg(), table.as_deref(), chunk).await
            }
            Command::Check(_) => commands::check(cfg(), &file).await,
            Command::Reconcile {
                table,
                direction,
                repair,
                examples,
                json,
                ..
            } => {
                let options = godata_bridge::reconcile::Options {
                    table,
                    direction,
                    examples,
                };
                match commands::reconcile(cfg(), &options, repair, json).await {
                    Ok(0) => Ok(()),
                    Ok(_) => Err(anyhow::Error::new(commands::DriftFound)),
                    Err(e) => Err(e.context(commands::ReconcileFailed)),
                }
            }
            Command::Fhir { case_id, .. } => commands::fhir(cfg(), &case_id).await,
            Command::Bench {
                scenario,
                quick,
                json,
            } => {
                let rows = godata_bridge::bench::run(&scenario, quick).await?;
                print!("{}", godata_bridge::bench::table(&rows));
                if let Some(path) = json {
                    std::fs::write(&path, serde_json::to_vec_pretty(&rows)?)?;
                }
                Ok(())
            }
            Command::Completions { shell } => {
                use clap::CommandFactory;
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "godata-bridge",
                    &mut std::io::stdout(),
                );
                Ok(())
            }
            Command::Demo {
                database_url,
                godata_listen,
            } => godata_bridge::demo::run(database_url, godata_listen).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `reconcile`: 1 is drift (the report said so), 2 an error.
        Err(e) if e.is::<commands::DriftFound>() => ExitCode::FAILURE,
        Err(e) if e.is::<commands::ReconcileFailed>() => {
            let _ = report(&e);
            ExitCode::from(2)
        }
        Err(e)
            if e.is::<commands::CatalogMismatch>()
                || e.is::<commands::CredentialsRefused>()
                || e.is::<commands::ConfigProblem>() =>
        {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
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
