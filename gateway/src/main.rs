//! The `gateway` binary; everything lives in the library (`gateway::cli`).

fn main() -> std::process::ExitCode {
    gateway::cli::main()
}
