fn main() {
    // Like other command-line tools, end quietly when the reader of our output goes away
    // (`chimera ... | head`) instead of panicking on a closed pipe.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    std::process::exit(chimera::cli::main());
}
