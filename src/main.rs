fn main() {
    std::process::exit(chimera::cli::main());
}
