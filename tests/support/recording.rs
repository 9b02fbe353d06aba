//! A TCP proxy that records what the client sends (HTTP/1.1 in clear), and the requests in it.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP proxy to `target` that keeps every byte the client sends (HTTP/1.1 in clear).
pub async fn recording_proxy(
    target: std::net::SocketAddr,
) -> (std::net::SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let record = sent.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(target).await.unwrap();
            let ((mut client_rx, mut client_tx), (mut server_rx, mut server_tx)) =
                (client.into_split(), server.into_split());
            tokio::spawn(async move { tokio::io::copy(&mut server_rx, &mut client_tx).await });
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = vec![0; 64 * 1024];
                while let Ok(n @ 1..) = client_rx.read(&mut buf).await {
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                    if server_tx.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, sent)
}

/// The HTTP requests in `sent` (what [`recording_proxy`] kept), each as its lower-cased head
/// and body.
pub fn requests(sent: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(sent).to_lowercase();
    // A request starts at a request line; a body has no line end, so search the whole text.
    let is_start = |i: usize| {
        ["post /", "get /", "delete /"]
            .iter()
            .any(|m| text[i..].starts_with(m))
            && text[i..]
                .split("\r\n")
                .next()
                .is_some_and(|l| l.ends_with(" http/1.1"))
    };
    let starts: Vec<usize> = (0..text.len())
        .filter(|&i| text.is_char_boundary(i) && is_start(i))
        .collect();
    let ends = starts.iter().skip(1).copied().chain([text.len()]);
    let requests: Vec<String> = starts
        .iter()
        .zip(ends)
        .map(|(&a, b)| text[a..b].to_owned())
        .collect();
    requests
}
