//! The hybrid handshake over Windows named pipes (runs on Windows, or under
//! wine: `CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine cargo test
//! -p krypton-devices --target x86_64-pc-windows-gnu --test vsock_pipe`).
#![cfg(windows)]

mod vsock_driver;

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::windows::named_pipe::{ClientOptions, ServerOptions};

use krypton_devices::virtio::vsock::VsockHost;
use vsock_driver::{Guest, Layout, SHUT_RCV, SHUT_SEND, pattern};

const T: Duration = Duration::from_secs(15);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn named_pipe_connect_and_listen() {
    let rt = runtime();
    let name = format!(r"\\.\pipe\krypton-vsock-test-{}", std::process::id());
    let host = VsockHost::named_pipe(name.clone()).expect("pipe");
    let mut g = Guest::new(Layout::Single, host, 3);
    g.listening.insert(5000);

    // Host to guest: CONNECT over the pipe.
    let payload = pattern(100_000, 1);
    let (n, p) = (name.clone(), payload.clone());
    let client = rt.spawn(async move {
        let pipe = loop {
            match ClientOptions::new().open(&n) {
                Ok(c) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let mut pipe = BufReader::new(pipe);
        pipe.write_all(b"CONNECT 5000\n")
            .await
            .expect("connect line");
        pipe.write_all(&p).await.expect("payload");
        let mut line = String::new();
        pipe.read_line(&mut line).await.expect("OK line");
        let mut rest = Vec::new();
        pipe.read_to_end(&mut rest).await.expect("reply");
        (line, rest)
    });
    let key = g.accept(5000, T).expect("CONNECT reached the guest");
    assert_eq!(g.read_exact(key, payload.len(), T), payload);
    g.write(key, b"pipe reply");
    g.shutdown(key, SHUT_SEND | SHUT_RCV);
    let (line, rest) = rt.block_on(client).expect("client");
    assert_eq!(line, format!("OK {}\n", key.1));
    assert_eq!(rest, b"pipe reply");

    // Guest to host: the pipe NAME_6000.
    let server = rt.block_on(async {
        ServerOptions::new()
            .first_pipe_instance(true)
            .create(format!("{name}_6000"))
            .expect("server")
    });
    let srv = rt.spawn(async move {
        let mut server = server;
        server.connect().await.expect("guest connection");
        let mut got = vec![0u8; 50_000];
        server.read_exact(&mut got).await.expect("read");
        server.write_all(b"from host").await.expect("write");
        got
    });
    let key = g.connect(6000).expect("pipe server accepts");
    let up = pattern(50_000, 2);
    g.write(key, &up);
    assert_eq!(g.read_exact(key, 9, T), b"from host");
    assert_eq!(rt.block_on(srv).expect("server"), up);
    assert!(g.connect(6001).is_none(), "no pipe NAME_6001: RST");
}
