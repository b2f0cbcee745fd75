//! One host connection: hello, then dispatch of host messages to execs.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use anyhow::{Result, bail};
use krypton_protocol::{FrameReader, Message, PROTOCOL_VERSION, ProtocolError};

use crate::Agent;
use crate::exec::{ExecHandle, Input, Sink, send};

type Execs = Arc<Mutex<HashMap<u32, ExecHandle>>>;

/// Serves one connection until the host closes it; then kills what is
/// still running for it.
pub fn serve(agent: Arc<Agent>, stream: UnixStream) -> Result<()> {
    let mut reader = stream.try_clone()?;
    let sink: Sink = Arc::new(Mutex::new(stream));
    send(
        &sink,
        &Message::Hello {
            version: PROTOCOL_VERSION,
            caps: agent.caps(),
        },
    );
    let mut frames = FrameReader::default();
    match frames.read(&mut reader)? {
        Message::Hello { version, .. } if version == PROTOCOL_VERSION => {}
        Message::Hello { version, .. } => {
            let message = format!("unsupported protocol version {version}");
            send(
                &sink,
                &Message::Error {
                    id: 0,
                    message: message.clone(),
                },
            );
            bail!(message);
        }
        other => bail!("expected hello, got {other:?}"),
    }
    let execs: Execs = Arc::default();
    let result = dispatch(&agent, &mut reader, &mut frames, &sink, &execs);
    // Host gone: nothing may outlive the connection.
    for (_, h) in execs.lock().unwrap_or_else(|e| e.into_inner()).drain() {
        let _ = crate::sys::pidfd_signal(h.pidfd.as_raw_fd(), libc::SIGKILL);
    }
    result
}

fn dispatch(
    agent: &Arc<Agent>,
    reader: &mut UnixStream,
    frames: &mut FrameReader,
    sink: &Sink,
    execs: &Execs,
) -> Result<()> {
    let lookup = |id: u32| {
        let map = execs.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&id)
            .map(|h| (h.stdin.clone(), h.pidfd.clone(), h.pty.clone()))
    };
    loop {
        let msg = match frames.read(reader) {
            Ok(m) => m,
            Err(ProtocolError::Closed) => return Ok(()),
            Err(e) => {
                send(
                    sink,
                    &Message::Error {
                        id: 0,
                        message: e.to_string(),
                    },
                );
                return Err(e.into());
            }
        };
        match msg {
            Message::Exec(req) => {
                log::debug!("exec {} requested", req.id);
                let id = req.id;
                if execs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains_key(&id)
                {
                    send(
                        sink,
                        &Message::Error {
                            id,
                            message: format!("exec id {id} in use"),
                        },
                    );
                    continue;
                }
                let map = execs.clone();
                let done = move |id| {
                    map.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                };
                // Hold the map lock so `done` cannot run before the insert.
                let mut map = execs.lock().unwrap_or_else(|e| e.into_inner());
                match crate::exec::start(agent, *req, sink.clone(), done) {
                    Ok(h) => {
                        map.insert(id, h);
                    }
                    Err(e) => {
                        drop(map);
                        let message = format!("{e:#}");
                        send(
                            sink,
                            &Message::ExecError {
                                id,
                                code: 125,
                                message,
                            },
                        );
                    }
                }
            }
            Message::Stdin { id, data } => {
                if let Some((tx, _, _)) = lookup(id) {
                    let _ = tx.send(Input::Data(data));
                }
            }
            Message::StdinEof { id } => {
                if let Some((tx, _, _)) = lookup(id) {
                    let _ = tx.send(Input::Eof);
                }
            }
            Message::Signal { id, signo } => match lookup(id) {
                Some((_, pidfd, _)) => {
                    if let Err(e) = crate::sys::pidfd_signal(pidfd.as_raw_fd(), signo) {
                        log::debug!("signal {signo} to exec {id}: {e}");
                    }
                }
                None => send(
                    sink,
                    &Message::Error {
                        id,
                        message: "no such exec".into(),
                    },
                ),
            },
            Message::Resize { id, rows, cols } => {
                if let Some((_, _, Some(pty))) = lookup(id) {
                    crate::exec::resize(&pty, rows, cols);
                }
            }
            Message::Shutdown => crate::shutdown(agent),
            Message::Restored {
                entropy,
                unix_time_ns,
            } => {
                let result = if agent.pid1 {
                    crate::restore::apply(&entropy, unix_time_ns)
                } else {
                    Err(anyhow::anyhow!(
                        "not the VM's init: RNG and clock left alone"
                    ))
                };
                match result {
                    Ok(()) => log::debug!("restored: RNG reseeded, clock set"),
                    Err(e) => {
                        let message = format!("after restore: {e:#}");
                        log::warn!("{message}");
                        send(sink, &Message::Error { id: 0, message });
                    }
                }
            }
            other => {
                let message = format!("unexpected message {other:?}");
                send(sink, &Message::Error { id: 0, message });
            }
        }
    }
}
