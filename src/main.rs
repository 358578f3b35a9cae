//! The `tracegate` binary: parses the command line and runs the command. Everything it does
//! lives in the library (see ARCHITECTURE.md); this file only wires it to the process.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tracegate::cli::{self, Cli, Command};
use tracegate::config::Config;
use tracegate::server::Server;

fn main() -> ExitCode {
    // Help and version go to stdout with status 0; a usage error to stderr, one line and a
    // pointer to --help, with status 2.
    let command = match Cli::try_parse() {
        Ok(cli) => cli.command,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2));
        }
    };
    match command {
        Command::CheckConfig { config } => match Config::resolve(config.config.as_deref()) {
            Ok(config) => print_result(Ok(format!("{}config OK\n", config.describe()))),
            Err(e) => {
                eprintln!("tracegate: config error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config } => {
            init_logging();
            let config = match Config::resolve(config.config.as_deref()) {
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
                tracing::info!(listen = %addr, chunk_delay_ms, "mock-llm serving the OpenAI, Anthropic, Gemini, Azure OpenAI and Bedrock APIs");
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
        Command::Traces { limit, filters, admin } => {
            print_result(runtime().block_on(cli::traces(limit, &filters, &admin)))
        }
        Command::Export { filters, admin } => {
            let mut out = std::io::stdout().lock();
            match runtime().block_on(cli::export(&filters, &admin, &mut out)) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) if e == cli::BROKEN_PIPE => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tracegate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Delete { filters, trace, dry_run, admin } => {
            print_result(runtime().block_on(cli::delete(&filters, trace.as_deref(), dry_run, &admin)))
        }
        Command::Trace { trace_id, admin } => print_result(runtime().block_on(cli::trace(&trace_id, &admin))),
        Command::Usage { query, admin } => print_result(runtime().block_on(cli::usage(&query, &admin))),
        Command::Prices { model, config } => print_result(cli::prices(model.as_deref(), &config)),
    }
}

/// Prints a command's output, or its error with status 1. A reader that stops early
/// (`tracegate prices | head`) closes the pipe: that ends the output quietly, as in other
/// command-line tools, instead of panicking on the failed write.
fn print_result(result: Result<String, String>) -> ExitCode {
    use std::io::Write;
    match result {
        Ok(text) => {
            let mut out = std::io::stdout().lock();
            match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tracegate: cannot write the output: {e}");
                    ExitCode::FAILURE
                }
            }
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
