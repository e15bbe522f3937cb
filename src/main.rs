//! The `haoka-sync` binary: the command line of `haoka_sync::cli`, then the
//! process ends with its exit code.

use std::io::Write;

fn main() {
    let code = haoka_sync::cli::main();
    // Whatever a command printed goes out first.
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // The process ends without the C library's exit handlers. libpq's
    // OpenSSL registers one that frees OpenSSL's global locks, while
    // r2d2's threads may still be opening or closing a connection (a
    // connection opened for a getter that another one's returned connection
    // served first; a pool whose last reference was that thread's): an SSL
    // call of theirs after the handler dereferences a freed lock, and the
    // command that had finished its work dies of SIGSEGV instead of exiting
    // with its code (seen as `r2d2-worker-0 segfault ... in libc.so.6` in
    // the kernel log, a `poll-once` with no exit code in the tests). Nothing
    // of ours needs those handlers: output is flushed above, the database
    // sees its sockets closed either way, and Rust runs no destructors at
    // exit.
    //
    // SAFETY: `_exit` only ends the process; it reads no memory of ours.
    #[allow(unsafe_code)]
    unsafe {
        libc::_exit(i32::from(code))
    }
}
