//! The HTTP uplink's connector: TCP by hyper-util, TLS by rustls with a client config read
//! from `[upstream.tls]` for every new connection, and TLS failures said in words.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use http::uri::Scheme;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::{HttpsConnectorBuilder, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use crate::tls::ClientTls;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `http://` over TCP, `https://` over rustls with [`ClientTls::load`] run per connection
/// (so a rotated certificate is used by the next one). Clones share the TLS record.
#[derive(Clone)]
pub struct HttpsConnector {
    http: HttpConnector,
    tls: Arc<ClientTls>,
}

impl HttpsConnector {
    /// TLS per `tls`, TCP by `http` (which bounds its own connects).
    pub fn new(http: HttpConnector, tls: ClientTls) -> Self {
        Self {
            http,
            tls: Arc::new(tls),
        }
    }
}

impl Service<Uri> for HttpsConnector {
    type Response = Explained<MaybeHttpsStream<TokioIo<TcpStream>>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut http = self.http.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let stream = if uri.scheme() == Some(&Scheme::HTTPS) {
                let config = Arc::unwrap_or_clone(tls.load()?);
                let mut https = HttpsConnectorBuilder::new()
                    .with_tls_config(config)
                    .https_only()
                    .enable_http1()
                    .wrap_connector(http);
                https
                    .call(uri)
                    .await
                    .map_err(|e| match tls.explain_chain(&*e) {
                        Some(text) => io::Error::other(text).into(),
                        None => e,
                    })?
            } else {
                MaybeHttpsStream::Http(http.call(uri).await?)
            };
            Ok(Explained { inner: stream, tls })
        })
    }
}

/// A connection whose I/O errors with a TLS cause (e.g. the server's alert refusing a client
/// certificate, which TLS 1.3 delivers after the handshake) say it in words.
pub struct Explained<S> {
    inner: S,
    tls: Arc<ClientTls>,
}

impl<S> Explained<S> {
    fn map<T>(&self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        r.map_err(|e| self.tls.explain_io(e))
    }
}

impl<S: Read + Unpin> Read for Explained<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.map(r)
    }
}

impl<S: Write + Unpin> Write for Explained<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.map(r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.map(r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.map(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.map(r)
    }
}

impl<S: Connection> Connection for Explained<S> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}
