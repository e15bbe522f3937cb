fn main() -> std::process::ExitCode {
    haoka_sync::cli::main()
}
