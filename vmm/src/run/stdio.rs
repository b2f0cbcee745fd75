//! [`run_command`]: a run wired to this process's stdin, stdout, stderr,
//! signals and terminal.

use std::io::Read;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::session::{Control, RunIo, Stdin, run_with_io};
use super::{RunError, RunOptions};

/// Runs `opts` on the agent behind `stream` with this process's stdio;
/// see the module docs for signals, raw mode and exit codes.
pub async fn run_command<S>(stream: S, opts: &RunOptions) -> Result<i32, RunError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    run_command_ctl(stream, opts, mpsc::unbounded_channel()).await
}

/// [`run_command`] with a control channel whose sender the caller may
/// also use (the OCI monitor forwards `kill` through it).
pub async fn run_command_ctl<S>(
    stream: S,
    opts: &RunOptions,
    (ctl_tx, ctl_rx): (
        mpsc::UnboundedSender<Control>,
        mpsc::UnboundedReceiver<Control>,
    ),
) -> Result<i32, RunError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let stdin = if opts.interactive {
        spawn_stdin_reader()
    } else {
        Stdin::Null
    };
    let size = if opts.tty { term::size() } else { None };
    let _raw = if opts.tty {
        term::RawMode::enable()
    } else {
        None
    };
    let signals = term::forward_signals(ctl_tx, opts.tty);
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let io = RunIo {
        stdin,
        stdout: &mut stdout,
        stderr: &mut stderr,
        control: Some(ctl_rx),
        size,
    };
    let result = run_with_io(stream, opts, io).await;
    signals.abort();
    result
}

/// Reads fd 0 on a detached thread (a blocking read cannot be cancelled,
/// and must not keep an async runtime from shutting down).
fn spawn_stdin_reader() -> Stdin {
    let (tx, rx) = mpsc::channel(4);
    let spawned = std::thread::Builder::new()
        .name("run-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; krypton_protocol::MAX_CHUNK];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        log::warn!("reading stdin: {e}");
                        return;
                    }
                }
            }
        });
    match spawned {
        Ok(_) => Stdin::Chunks(rx),
        Err(e) => {
            log::warn!("cannot start stdin reader: {e}");
            Stdin::Null
        }
    }
}

#[cfg(target_os = "linux")]
mod term {
    use super::Control;
    use tokio::signal::unix::{SignalKind, signal};
    use tokio::sync::mpsc::UnboundedSender;

    /// Terminal size of stdout (or stdin) as (rows, cols).
    pub fn size() -> Option<(u16, u16)> {
        [libc::STDOUT_FILENO, libc::STDIN_FILENO]
            .into_iter()
            .find_map(|fd| {
                // SAFETY: winsize is plain data.
                let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
                // SAFETY: ws is a valid out pointer for TIOCGWINSZ.
                let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
                (r == 0 && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
            })
    }

    /// Restores the saved termios of stdin on drop.
    pub struct RawMode(libc::termios);

    impl RawMode {
        /// Puts stdin in raw mode if it is a terminal.
        pub fn enable() -> Option<RawMode> {
            // SAFETY: isatty has no memory effects.
            if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
                return None;
            }
            // SAFETY: termios is plain data.
            let mut saved: libc::termios = unsafe { std::mem::zeroed() };
            // SAFETY: valid out pointer.
            if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
                return None;
            }
            let mut raw = saved;
            // SAFETY: raw is a valid termios.
            unsafe { libc::cfmakeraw(&mut raw) };
            // SAFETY: raw is a valid termios.
            if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
                return None;
            }
            Some(RawMode(saved))
        }
    }

    impl Drop for RawMode {
        fn drop(&mut self) {
            // SAFETY: restoring the termios saved in enable().
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.0) };
        }
    }

    /// Forwards SIGINT/SIGTERM/SIGHUP/SIGQUIT as signals and SIGWINCH as
    /// resizes (with a tty) until aborted.
    pub fn forward_signals(tx: UnboundedSender<Control>, tty: bool) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let kinds = [
                (SignalKind::interrupt(), libc::SIGINT),
                (SignalKind::terminate(), libc::SIGTERM),
                (SignalKind::hangup(), libc::SIGHUP),
                (SignalKind::quit(), libc::SIGQUIT),
            ];
            let mut streams = Vec::new();
            for (kind, signo) in kinds {
                match signal(kind) {
                    Ok(s) => streams.push((s, signo)),
                    Err(e) => log::warn!("cannot watch signal {signo}: {e}"),
                }
            }
            let mut winch = if tty {
                signal(SignalKind::window_change()).ok()
            } else {
                None
            };
            loop {
                let next = futures_select(&mut streams, winch.as_mut());
                match next.await {
                    Some(Control::Resize { .. }) => {
                        if let Some((rows, cols)) = size() {
                            let _ = tx.send(Control::Resize { rows, cols });
                        }
                    }
                    Some(c) => {
                        let _ = tx.send(c);
                    }
                    None => return,
                }
            }
        })
    }

    /// Waits for the first of the watched signals.
    async fn futures_select(
        streams: &mut [(tokio::signal::unix::Signal, i32)],
        mut winch: Option<&mut tokio::signal::unix::Signal>,
    ) -> Option<Control> {
        std::future::poll_fn(|cx| {
            for (s, signo) in streams.iter_mut() {
                if let std::task::Poll::Ready(r) = s.poll_recv(cx) {
                    return std::task::Poll::Ready(r.map(|()| Control::Signal(*signo)));
                }
            }
            if let Some(w) = winch.as_mut()
                && let std::task::Poll::Ready(Some(())) = w.poll_recv(cx)
            {
                return std::task::Poll::Ready(Some(Control::Resize { rows: 0, cols: 0 }));
            }
            std::task::Poll::Pending
        })
        .await
    }
}

#[cfg(not(target_os = "linux"))]
mod term {
    use super::Control;
    use tokio::sync::mpsc::UnboundedSender;

    pub fn size() -> Option<(u16, u16)> {
        None
    }

    pub struct RawMode;

    impl RawMode {
        pub fn enable() -> Option<RawMode> {
            None
        }
    }

    /// Forwards Ctrl-C as SIGINT until aborted.
    pub fn forward_signals(
        tx: UnboundedSender<Control>,
        _tty: bool,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                let _ = tx.send(Control::Signal(2));
            }
        })
    }
}
