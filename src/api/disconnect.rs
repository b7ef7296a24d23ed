//! Noticing that a client went away while its request is still being worked on.
//!
//! actix-web keeps polling a handler after the peer has closed the connection until it
//! writes something, so a non-streaming generation (or a request waiting in a queue)
//! would run on for nobody. At accept time the socket is remembered in the connection's
//! data; while a handler works, the socket is peeked every 100 ms (`MSG_PEEK`, never
//! consuming bytes): end-of-file or a reset means the client is gone, and the handler's
//! future is dropped, which cancels whatever it was waiting for.

use std::any::Any;
use std::future::Future;
use std::time::Duration;

use actix_web::dev::Extensions;
use actix_web::{HttpRequest, HttpResponse};

use crate::error::ApiError;

/// How often an idle connection is checked.
const POLL: Duration = Duration::from_millis(100);

/// The accepted socket of a connection.
#[derive(Debug, Clone, Copy)]
pub struct PeerSocket(#[cfg(unix)] std::os::fd::RawFd);

/// `HttpServer::on_connect` hook: remembers the socket of each plain TCP connection.
pub fn remember_socket(conn: &dyn Any, data: &mut Extensions) {
    #[cfg(unix)]
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        use std::os::fd::AsRawFd;
        data.insert(PeerSocket(tcp.as_raw_fd()));
    }
    #[cfg(not(unix))]
    let _ = (conn, data);
}

impl PeerSocket {
    /// Whether the peer has closed or reset the connection.
    #[cfg(unix)]
    fn is_closed(self) -> bool {
        let mut byte = [0u8; 1];
        // SAFETY: the descriptor belongs to the connection whose request is being
        // handled; it stays open while the handler runs (the handler is owned by that
        // connection's dispatcher). One byte is peeked into a valid local buffer.
        let n = unsafe {
            libc::recv(
                self.0,
                byte.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => true,
            n if n > 0 => false,
            _ => {
                let err = std::io::Error::last_os_error();
                !matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                )
            }
        }
    }

    #[cfg(not(unix))]
    fn is_closed(self) -> bool {
        false
    }

    /// Shuts the connection down both ways (the descriptor stays open for its owner, whose
    /// next read or write fails, so it closes the connection). The caller must know that
    /// the connection is still alive (see `sse::sse_response`).
    #[cfg(unix)]
    pub fn shut_down(self) {
        // SAFETY: called only while the connection that owns the descriptor is alive;
        // shutdown(2) does not close or invalidate the descriptor.
        unsafe {
            libc::shutdown(self.0, libc::SHUT_RDWR);
        }
    }

    /// Shuts the connection down (not available on this platform).
    #[cfg(not(unix))]
    pub fn shut_down(self) {}
}

/// Resolves once the client of `req` has gone away (never, when that cannot be known).
pub async fn client_gone(req: &HttpRequest) {
    let Some(socket) = req.conn_data::<PeerSocket>().copied() else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(POLL).await;
        if socket.is_closed() {
            return;
        }
    }
}

/// Runs `work` unless the client leaves first; then `work` is dropped (and with it any
/// queue place or generation it held).
pub async fn unless_client_gone<F>(req: &HttpRequest, work: F) -> Result<HttpResponse, ApiError>
where
    F: Future<Output = Result<HttpResponse, ApiError>>,
{
    tokio::select! {
        result = work => result,
        _ = client_gone(req) => Err(ApiError::ClientDisconnected),
    }
}
