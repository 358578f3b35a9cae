//! The `tracegate` binary: parses the command line and runs the command. Everything it does
//! lives in the library (see ARCHITECTURE.md); this file only wires it to the process.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use tracegate::cli::{self, Command};
use tracegate::config::Config;
use tracegate::server::Server;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match cli::parse(&args) {
        Ok(c) => c,
        Err(message) => {
            eprintln!("tracegate: {message}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config } => match Config::resolve(config.as_deref()) {
            Ok(config) => {
                print!("{}", config.describe());
                println!("config OK");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tracegate: config error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config } => {
            init_logging();
            let config = match Config::resolve(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("tracegate: config error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime().block_on(async move {
                let stop = stop_signal();
                let server = match Server::start(config).await {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("tracegate: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                stop.await;
                tracing::info!("shutting down: finishing in-flight calls and flushing spans");
                server.shutdown().await;
                ExitCode::SUCCESS
            })
        }
        Command::MockLlm { listen, chunk_delay_ms } => {
            init_logging();
            runtime().block_on(async move {
                let listener = match tokio::net::TcpListener::bind(&listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("tracegate mock-llm: cannot listen on {listen}: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or(listen);
                tracing::info!(listen = %addr, chunk_delay_ms, "mock-llm serving the OpenAI and Anthropic APIs");
                let config = tracegate::mock_llm::MockConfig { chunk_delay: Duration::from_millis(chunk_delay_ms) };
                tokio::select! {
                    result = tracegate::mock_llm::serve(listener, config) => {
                        if let Err(e) = result {
                            eprintln!("tracegate mock-llm: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                    _ = stop_signal() => {}
                }
                ExitCode::SUCCESS
            })
        }
        Command::Traces { limit, admin } => print_result(runtime().block_on(cli::traces(limit, &admin))),
        Command::Trace { trace_id, admin } => print_result(runtime().block_on(cli::trace(&trace_id, &admin))),
        Command::Usage { query, csv, admin } => print_result(runtime().block_on(cli::usage(&query, csv, &admin))),
    }
}

fn print_result(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tracegate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// Resolves on SIGINT (Ctrl-C), SIGTERM or SIGHUP: each a polite request to stop, so each
/// shuts down gracefully (drain, flush every answered call). Without a handler SIGHUP — a
/// closed terminal, a supervisor's stop — would end the process before the last spans are
/// written. The handlers are installed when this is called, before anything is served.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut signals = [SignalKind::interrupt(), SignalKind::terminate(), SignalKind::hangup()]
            .map(|kind| signal(kind).expect("a signal handler"));
        async move {
            let [int, term, hup] = &mut signals;
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
