//! SIGTERM's lame-duck period and SIGINT, by real handlers: as PID 1 of a container a signal
//! left at SIG_DFL is dropped.

use std::{
    io::{self, Read, Write},
    os::fd::FromRawFd,
    process::exit,
    sync::atomic::{AtomicBool, AtomicI32, Ordering},
    thread,
    time::Duration,
};

/// Set once SIGTERM started the lame-duck period.
pub static LAME_DUCK: AtomicBool = AtomicBool::new(false);
/// The write end of the self-pipe the signal handler reports SIGTERM on (-1: none yet).
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);
/// A SIGTERM was already received (a second one exits at once).
static TERMINATING: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe calls here: atomics, write(2), _exit(2).
    if sig == libc::SIGTERM && !TERMINATING.swap(true, Ordering::SeqCst) {
        let fd = SIGNAL_PIPE.load(Ordering::SeqCst);
        if fd >= 0 {
            let b = 1u8;
            // SAFETY: writes one byte from a live local; the pipe lives as long as the process.
            if unsafe { libc::write(fd, (&raw const b).cast(), 1) } == 1 {
                return;
            }
        }
    }
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

/// Installs the SIGTERM/SIGINT handler (a real handler, not SIG_DFL: as PID 1 of a container
/// a signal left at SIG_DFL is dropped) and starts the thread that runs the lame-duck period
/// when SIGTERM arrives.
pub fn install_signal_handlers(name: String, lame_duck: Duration) {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        eprintln!("xlb-testd: pipe2: {}", io::Error::last_os_error());
        exit(1)
    }
    SIGNAL_PIPE.store(fds[1], Ordering::SeqCst);
    // SAFETY: fds[0] is ours; the File owns it from now on.
    let mut rd = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut b = [0u8; 1];
            loop {
                match rd.read(&mut b) {
                    Ok(1) => break,
                    Ok(_) => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                }
            }
            if !lame_duck.is_zero() {
                LAME_DUCK.store(true, Ordering::SeqCst);
                let mut out = io::stdout().lock();
                let _ = writeln!(out, "xlb-testd {name} lame duck for {} ms", lame_duck.as_millis());
                let _ = out.flush();
                drop(out);
                thread::sleep(lame_duck);
            }
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "xlb-testd {name} exiting");
            let _ = out.flush();
            // SAFETY: ends the process without running destructors other threads may be using.
            unsafe { libc::_exit(0) }
        })
        .expect("spawn signal thread");
    // SAFETY: installs a handler that only uses async-signal-safe calls; SA_RESTART so that
    // accept(2) and friends are restarted rather than failing with EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        // Writes to a peer that went away must give EPIPE, not kill us.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}
