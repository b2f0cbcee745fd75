//! The protocol engine of one run: hello, exec, stdio relay, exit.

use krypton_protocol::{
    ExecRequest, MAX_CHUNK, Message, PROTOCOL_VERSION, ProtocolError, Stream, read_message_async,
    write_message_async,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{RunError, RunOptions, Timeline};

/// The exec id used for the single command of a run.
const EXEC_ID: u32 = 1;

/// An event forwarded to the running command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Deliver this signal.
    Signal(i32),
    /// The terminal was resized.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
}

/// Where the command's stdin comes from (used only with `interactive`).
pub enum Stdin {
    /// Nothing: EOF at once.
    Null,
    /// Any async reader; EOF is forwarded when it ends.
    Reader(Box<dyn AsyncRead + Unpin + Send>),
    /// Chunks from a channel; EOF when every sender is dropped.
    Chunks(mpsc::Receiver<Vec<u8>>),
}

impl std::fmt::Debug for Stdin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stdin::Null => "Stdin::Null",
            Stdin::Reader(_) => "Stdin::Reader",
            Stdin::Chunks(_) => "Stdin::Chunks",
        })
    }
}

/// The local side of a run.
pub struct RunIo<'a> {
    /// Input for the command.
    pub stdin: Stdin,
    /// Receives the command's stdout (and the PTY output with `tty`).
    pub stdout: &'a mut (dyn AsyncWrite + Unpin + Send),
    /// Receives the command's stderr.
    pub stderr: &'a mut (dyn AsyncWrite + Unpin + Send),
    /// Signals and resizes to forward; `None` for none.
    pub control: Option<mpsc::UnboundedReceiver<Control>>,
    /// Initial PTY size (rows, cols) with `tty`; default 24x80.
    pub size: Option<(u16, u16)>,
}

impl std::fmt::Debug for RunIo<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunIo")
            .field("stdin", &self.stdin)
            .field("size", &self.size)
            .finish()
    }
}

/// Runs `opts` on the agent at the other end of `stream` with the given
/// local streams; returns the command's exit code (126/127 when it could
/// not be started, 128+N when killed by signal N).
pub async fn run_with_io<S>(stream: S, opts: &RunOptions, io: RunIo<'_>) -> Result<i32, RunError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    if opts.argv.is_empty() {
        return Err(RunError::Invalid("empty command"));
    }
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let fut = drive(stream, opts, io, started_tx);
    let Some(limit) = opts.timeout else {
        return fut.await;
    };
    // The limit is the command's run time: it starts when the agent says
    // the command started (container set-up is not counted).
    tokio::pin!(fut);
    tokio::select! {
        r = &mut fut => return r,
        _ = started_rx => {}
    }
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| RunError::Timeout)?
}

fn exec_request(opts: &RunOptions, size: Option<(u16, u16)>) -> ExecRequest {
    let (rows, cols) = size.unwrap_or((24, 80));
    ExecRequest {
        id: EXEC_ID,
        argv: opts.argv.clone(),
        env: opts.env.clone(),
        cwd: opts.cwd.clone(),
        uid: opts.uid,
        gid: opts.gid,
        tty: opts.tty,
        rows,
        cols,
        rootfs: opts.rootfs.clone(),
        hostname: opts.hostname.clone(),
        limits: opts.limits.clone(),
        mounts: opts.mounts.clone(),
        user: opts.user.clone(),
        image: opts.image.clone(),
        oci: opts.oci.clone(),
    }
}

async fn drive<S>(
    stream: S,
    opts: &RunOptions,
    io: RunIo<'_>,
    started: tokio::sync::oneshot::Sender<()>,
) -> Result<i32, RunError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    write_message_async(
        &mut wr,
        &Message::Hello {
            version: PROTOCOL_VERSION,
            caps: 0,
        },
    )
    .await?;
    match read_message_async(&mut rd).await? {
        Message::Hello {
            version: PROTOCOL_VERSION,
            caps,
        } => {
            log::debug!("agent hello, caps {caps:#x}");
            if !opts.mounts.is_empty() && caps & krypton_protocol::caps::MOUNTS == 0 {
                return Err(RunError::Handshake(
                    "the guest agent cannot mount shared directories".into(),
                ));
            }
            if opts.image.is_some() && caps & krypton_protocol::caps::LAYERS == 0 {
                return Err(RunError::Handshake(
                    "the guest agent cannot stack image layers".into(),
                ));
            }
            if opts.oci.is_some() && caps & krypton_protocol::caps::OCI == 0 {
                return Err(RunError::Handshake(
                    "the guest agent cannot run OCI bundles".into(),
                ));
            }
            if !opts.user.is_empty() && caps & krypton_protocol::caps::USERS == 0 {
                return Err(RunError::Handshake(
                    "the guest agent cannot resolve user names".into(),
                ));
            }
            if let Some(t) = &opts.timeline {
                t.mark("agent ready");
            }
            if opts.restored && caps & krypton_protocol::caps::RESTORE == 0 {
                return Err(RunError::Handshake(
                    "the agent cannot reseed its RNG after a snapshot restore".into(),
                ));
            }
            // After a restore the guest's RNG and clock are the template's;
            // after a cold boot its clock may still lag (an emulated boot
            // runs the guest clock slow), so every VM gets both.
            if caps & krypton_protocol::caps::RESTORE != 0 {
                write_message_async(&mut wr, &restored_message()?).await?;
            }
        }
        Message::Hello { version, .. } => {
            return Err(RunError::Handshake(format!(
                "agent speaks protocol {version}"
            )));
        }
        other => {
            return Err(RunError::Handshake(format!(
                "expected hello, got {other:?}"
            )));
        }
    }
    write_message_async(
        &mut wr,
        &Message::Exec(Box::new(exec_request(opts, io.size))),
    )
    .await?;

    let (tx, mut rx) = mpsc::channel::<Message>(16);
    let writer = async move {
        while let Some(m) = rx.recv().await {
            write_message_async(&mut wr, &m).await?;
        }
        Ok::<_, ProtocolError>(())
    };
    let stdin = if opts.interactive {
        io.stdin
    } else {
        Stdin::Null
    };
    let stdin_pump = pump_stdin(stdin, tx.clone());
    let control = forward_control(io.control, tx);
    let reader = read_events(
        &mut rd,
        io.stdout,
        io.stderr,
        opts.timeline.as_ref(),
        started,
        opts.started.as_ref(),
    );
    tokio::pin!(writer, stdin_pump, control, reader);
    let (mut writer_done, mut stdin_done, mut control_done) = (false, false, false);
    loop {
        tokio::select! {
            biased;
            r = &mut reader => return r,
            w = &mut writer, if !writer_done => {
                writer_done = true;
                if let Err(e) = w {
                    // The reader sees the end of the stream next.
                    log::debug!("agent write side: {e}");
                }
            }
            () = &mut stdin_pump, if !stdin_done => stdin_done = true,
            () = &mut control, if !control_done => control_done = true,
        }
    }
}

async fn pump_stdin(stdin: Stdin, tx: mpsc::Sender<Message>) {
    {
        match stdin {
            Stdin::Null => {}
            Stdin::Reader(mut r) => {
                let mut buf = vec![0u8; MAX_CHUNK];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => {
                            let m = Message::Stdin {
                                id: EXEC_ID,
                                data: buf[..n].to_vec(),
                            };
                            if tx.send(m).await.is_err() {
                                return;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            log::warn!("reading stdin: {e}");
                            break;
                        }
                    }
                }
            }
            Stdin::Chunks(mut rx) => {
                while let Some(data) = rx.recv().await {
                    for chunk in data.chunks(MAX_CHUNK) {
                        let m = Message::Stdin {
                            id: EXEC_ID,
                            data: chunk.to_vec(),
                        };
                        if tx.send(m).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        let _ = tx.send(Message::StdinEof { id: EXEC_ID }).await;
    }
}

async fn forward_control(
    control: Option<mpsc::UnboundedReceiver<Control>>,
    tx: mpsc::Sender<Message>,
) {
    {
        let Some(mut control) = control else { return };
        while let Some(c) = control.recv().await {
            let m = match c {
                Control::Signal(signo) => Message::Signal { id: EXEC_ID, signo },
                Control::Resize { rows, cols } => Message::Resize {
                    id: EXEC_ID,
                    rows,
                    cols,
                },
            };
            if tx.send(m).await.is_err() {
                return;
            }
        }
    }
}

async fn read_events<R, O, E>(
    rd: &mut R,
    stdout: &mut O,
    stderr: &mut E,
    timeline: Option<&Timeline>,
    started_tx: tokio::sync::oneshot::Sender<()>,
    pid_tx: Option<&std::sync::mpsc::Sender<u32>>,
) -> Result<i32, RunError>
where
    R: AsyncRead + Unpin,
    O: AsyncWrite + Unpin + ?Sized,
    E: AsyncWrite + Unpin + ?Sized,
{
    let mut started = false;
    let mut started_tx = Some(started_tx);
    let mut out_broken = false;
    loop {
        let msg = match read_message_async(rd).await {
            Ok(m) => m,
            Err(ProtocolError::Closed) => {
                return Err(RunError::Agent(
                    "the agent closed the connection before the command's exit status (it died or the guest stopped)"
                        .into(),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        match msg {
            Message::Started { id: EXEC_ID, pid } => {
                log::debug!("command started (agent pid {pid})");
                if let Some(tx) = pid_tx {
                    let _ = tx.send(pid);
                }
                if let Some(t) = timeline {
                    t.mark("exec started");
                }
                if let Some(tx) = started_tx.take() {
                    let _ = tx.send(());
                }
                started = true;
            }
            Message::ExecError {
                id: EXEC_ID,
                code,
                message,
            } => {
                log::debug!("command did not start: {message}");
                if code == 125 {
                    return Err(RunError::Agent(message));
                }
                return Err(RunError::NotStarted {
                    code: i32::from(code),
                    message,
                });
            }
            Message::Output {
                id: EXEC_ID,
                stream,
                data,
            } => {
                let r = match stream {
                    Stream::Stdout => stdout.write_all(&data).await,
                    Stream::Stderr => stderr.write_all(&data).await,
                };
                // A closed local output must not stop us from reaching Exit.
                if let Err(e) = r
                    && !std::mem::replace(&mut out_broken, true)
                {
                    log::debug!("local output closed: {e}");
                }
            }
            Message::OutputEof {
                id: EXEC_ID,
                stream,
            } => {
                let _ = match stream {
                    Stream::Stdout => stdout.flush().await,
                    Stream::Stderr => stderr.flush().await,
                };
            }
            Message::Exit {
                id: EXEC_ID,
                status,
            } => {
                stdout.flush().await.map_err(RunError::Io)?;
                stderr.flush().await.map_err(RunError::Io)?;
                if let Some(t) = timeline {
                    t.mark("exit status");
                }
                if !started {
                    log::debug!("exit before started");
                }
                return Ok(status.code());
            }
            Message::Error { message, .. } => return Err(RunError::Agent(message)),
            other => {
                krypton_devices::warn_ratelimited!("agent sent an unexpected message: {other:?}")
            }
        }
    }
}

/// Fresh host entropy and the host's clock for a restored VM.
fn restored_message() -> Result<Message, RunError> {
    let mut entropy = vec![0u8; 64];
    getrandom::fill(&mut entropy)
        .map_err(|e| RunError::Handshake(format!("no host entropy for the restored VM: {e}")))?;
    let unix_time_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    Ok(Message::Restored {
        entropy,
        unix_time_ns,
    })
}
