use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> std::process::ExitCode {
    match sluice::cli::main() {
        Ok(code) => code,
        Err(e) => {
            // One line with the whole cause chain, as an operator reads it in the journal;
            // returning the error from `main` would print anyhow's `Debug` form, with a stack
            // backtrace whenever RUST_BACKTRACE is set in the service's environment.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
