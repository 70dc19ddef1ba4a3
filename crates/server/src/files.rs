//! Static files under `--public`, and the write deadline that bounds sending them.
//!
//! tower-http's `ServeDir` still does the HTTP side (decoding and checking the path,
//! `index.html` for directories and the redirect to their trailing slash, the content
//! type, `HEAD`, ranges, `ETag` and `Last-Modified`), but every file-system access goes
//! through [`Guarded`], which only ever opens a regular file inside the directory:
//! - Symbolic links are resolved (`canonicalize`) and the result must stay under the
//!   directory, itself resolved on each request (so a `current -> release-N` swap of
//!   the directory is followed). Links that stay inside keep working.
//! - The type is checked before anything is opened: a FIFO blocks `open()` until a
//!   writer appears, which held a blocking thread forever and with it the process's
//!   exit. Sockets and devices are refused the same way.
//! - Whatever is refused, and whatever fails while resolving, is "not found": the
//!   answer does not tell why.
//!
//! [`WriteDeadline`] is the other half: `ServeDir` streams a file in chunks, and hyper
//! only asks the body for the next chunk when its own buffer has room. A client that
//! stops reading therefore leaves hyper waiting on the socket, where no timer of the
//! body is ever looked at again (hyper's `Dispatcher::poll_write` goes to `poll_flush`
//! without polling the body). The timeout must wrap the connection's IO instead.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tower::ServiceExt as _;
use tower_http::services::ServeDir;
use tower_http::services::fs::{Backend, File};
use tracing::debug;

/// Answers `request` with a file from `dir`, or 404 (405 for methods other than `GET`
/// and `HEAD`).
pub(crate) async fn serve(dir: &Path, request: Request) -> Response {
    let files = ServeDir::with_backend(dir, Guarded::new(dir));
    match files.oneshot(request).await {
        Ok(response) => response.into_response(),
        Err(never) => match never {},
    }
}

/// The file system as `ServeDir` sees it: only the directories and regular files that
/// are inside `root` once every symbolic link is resolved.
#[derive(Clone, Debug)]
pub(crate) struct Guarded {
    /// The directory as configured; resolved again on every access.
    root: Arc<Path>,
}

impl Guarded {
    pub(crate) fn new(root: &Path) -> Self {
        Self { root: root.into() }
    }
}

impl Backend for Guarded {
    type File = PublicFile;
    type Metadata = std::fs::Metadata;
    type OpenFuture = BoxFuture<'static, io::Result<PublicFile>>;
    type MetadataFuture = BoxFuture<'static, io::Result<std::fs::Metadata>>;

    fn open(&self, path: PathBuf) -> Self::OpenFuture {
        let root = Arc::clone(&self.root);
        Box::pin(blocking(move || {
            open_inside(&root, &path).map(|file| PublicFile(tokio::fs::File::from_std(file)))
        }))
    }

    fn metadata(&self, path: PathBuf) -> Self::MetadataFuture {
        let root = Arc::clone(&self.root);
        Box::pin(blocking(move || metadata_inside(&root, &path)))
    }
}

/// Runs file-system calls on the blocking pool, never on the runtime's workers.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(call)
        .await
        .unwrap_or_else(|join| Err(io::Error::other(join)))
}

/// What every refusal looks like: `ServeDir` answers it with 404.
fn hidden(path: &Path, why: impl std::fmt::Display) -> io::Error {
    debug!(path = %path.display(), %why, "static file refused");
    io::Error::from(io::ErrorKind::NotFound)
}

/// `path` with every symbolic link resolved, if that is inside `root` (also resolved).
fn resolve(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let root = std::fs::canonicalize(root).map_err(|error| hidden(root, error))?;
    let resolved = std::fs::canonicalize(path).map_err(|error| hidden(path, error))?;
    if resolved.starts_with(&root) {
        Ok(resolved)
    } else {
        Err(hidden(path, "resolves outside the public directory"))
    }
}

/// The metadata of a directory or regular file inside `root`.
fn metadata_inside(root: &Path, path: &Path) -> io::Result<std::fs::Metadata> {
    let resolved = resolve(root, path)?;
    let metadata = std::fs::metadata(&resolved).map_err(|error| hidden(path, error))?;
    if metadata.is_file() || metadata.is_dir() {
        Ok(metadata)
    } else {
        Err(hidden(path, "not a regular file"))
    }
}

/// Opens a regular file inside `root`.
///
/// The type is checked before `open()`, which blocks on a FIFO. Between that check and
/// the `open()` the file could be renamed over by a FIFO; on Unix the `open()` is
/// therefore non-blocking (which changes nothing for a regular file) and the opened
/// file's type is checked again.
fn open_inside(root: &Path, path: &Path) -> io::Result<std::fs::File> {
    let resolved = resolve(root, path)?;
    let metadata = std::fs::metadata(&resolved).map_err(|error| hidden(path, error))?;
    if !metadata.is_file() {
        return Err(hidden(path, "not a regular file"));
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(&resolved)?;
    if file.metadata()?.is_file() {
        Ok(file)
    } else {
        Err(hidden(
            path,
            "replaced by something else than a regular file",
        ))
    }
}

/// An opened public file: tokio's file, with the trait `ServeDir` wants.
#[derive(Debug)]
pub(crate) struct PublicFile(tokio::fs::File);

impl AsyncRead for PublicFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncSeek for PublicFile {
    fn start_seek(mut self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        Pin::new(&mut self.0).start_seek(position)
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Pin::new(&mut self.0).poll_complete(cx)
    }
}

impl File for PublicFile {
    type Metadata = std::fs::Metadata;
    type MetadataFuture<'a> = BoxFuture<'a, io::Result<std::fs::Metadata>>;

    fn metadata(&self) -> Self::MetadataFuture<'_> {
        Box::pin(self.0.metadata())
    }
}

/// A connection whose writes fail with `TimedOut` once one of them has been waiting
/// for `timeout` without the peer taking a single byte.
///
/// Wraps each HTTP connection's socket, so that a response (a large static file above
/// all) cannot hold a connection, its buffers and its open file while the client does
/// not read. Reads are not limited here: hyper's header read timeout covers them.
#[derive(Debug)]
pub(crate) struct WriteDeadline<T> {
    io: T,
    timeout: Duration,
    /// Started when a write first waits, dropped as soon as one makes progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteDeadline<T> {
    /// `io` whose writes may wait at most `timeout` each.
    pub(crate) const fn new(io: T, timeout: Duration) -> Self {
        Self {
            io,
            timeout,
            stalled: None,
        }
    }

    /// The connection, for an upgraded socket that enforces its own write timeout.
    pub(crate) fn into_inner(self) -> T {
        self.io
    }

    /// Passes on a write's outcome; a write still waiting after the deadline fails.
    fn check<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(stalled.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the peer took nothing for the write timeout",
        )))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.check(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.check(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.check(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A fresh directory under the system's temporary one, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "webrtc-bootstrap-files-{name}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("public/sub")).expect("create the scratch dir");
            std::fs::write(dir.join("public/index.html"), "<h1>hi</h1>").expect("write");
            std::fs::write(dir.join("secret.txt"), "secret").expect("write");
            Self(dir)
        }

        fn public(&self) -> PathBuf {
            self.0.join("public")
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn not_found<T: std::fmt::Debug>(result: io::Result<T>) -> bool {
        result.is_err_and(|error| error.kind() == io::ErrorKind::NotFound)
    }

    #[cfg(unix)]
    #[test]
    fn links_are_followed_only_inside_the_directory() {
        use std::os::unix::fs::symlink;
        let scratch = Scratch::new("links");
        let public = scratch.public();
        symlink("index.html", public.join("alias.html")).expect("symlink");
        symlink("../secret.txt", public.join("leak.txt")).expect("symlink");
        symlink("..", public.join("up")).expect("symlink");
        symlink("sub/../index.html", public.join("detour.html")).expect("symlink");
        assert!(open_inside(&public, &public.join("alias.html")).is_ok());
        assert!(open_inside(&public, &public.join("detour.html")).is_ok());
        assert!(not_found(open_inside(&public, &public.join("leak.txt"))));
        assert!(not_found(metadata_inside(
            &public,
            &public.join("leak.txt")
        )));
        assert!(not_found(open_inside(
            &public,
            &public.join("up/secret.txt")
        )));
        assert!(not_found(metadata_inside(&public, &public.join("up"))));
        assert!(metadata_inside(&public, &public.join("sub")).is_ok_and(|m| m.is_dir()));
        // The directory itself may be a link.
        let linked = scratch.0.join("linked");
        symlink("public", &linked).expect("symlink");
        assert!(open_inside(&linked, &linked.join("index.html")).is_ok());
        assert!(not_found(open_inside(&linked, &linked.join("leak.txt"))));
    }

    #[cfg(unix)]
    #[test]
    fn only_regular_files_are_opened() {
        let scratch = Scratch::new("types");
        let public = scratch.public();
        let fifo = public.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|status| status.success()), "mkfifo");
        let _listener = std::os::unix::net::UnixListener::bind(public.join("socket"));
        // Opening the FIFO would block this thread until a writer comes.
        assert!(not_found(open_inside(&public, &fifo)));
        assert!(not_found(metadata_inside(&public, &fifo)));
        assert!(not_found(open_inside(&public, &public.join("socket"))));
        assert!(not_found(open_inside(&public, &public.join("sub"))));
        assert!(not_found(open_inside(&public, &public.join("missing"))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_waits_too_long_fails_and_progress_resets_the_deadline() {
        let timeout = Duration::from_secs(10);
        let (near, mut far) = tokio::io::duplex(16);
        let mut near = WriteDeadline::new(near, timeout);
        // The peer takes one byte every 6 s: each write waits less than the timeout.
        let reader = tokio::spawn(async move {
            let mut byte = [0; 1];
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                far.read_exact(&mut byte).await.expect("read");
            }
            far
        });
        near.write_all(&[1; 24])
            .await
            .expect("a slow reader is not cut off");
        let far = reader.await.expect("reader");
        // Now it stops reading.
        let started = tokio::time::Instant::now();
        let error = near.write_all(&[2; 24]).await.expect_err("timed out");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), timeout);
        drop((near.into_inner(), far));
    }

    /// The router behind a [`WriteDeadline`] on a real socket, as `accept_loop` serves it.
    #[tokio::test]
    async fn a_client_that_stops_reading_a_large_file_is_cut_off() {
        use hyper_util::rt::TokioIo;
        let scratch = Scratch::new("stalled");
        let size: u64 = 32 << 20;
        std::fs::File::create(scratch.public().join("big.bin"))
            .and_then(|file| file.set_len(size))
            .expect("sparse file");
        let mut config = crate::Config::new("s3cret");
        config.public = Some(scratch.public());
        let app = crate::router(crate::AppState::new(config).expect("state"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let timeout = Duration::from_millis(200);
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let io = TokioIo::new(WriteDeadline::new(tcp, timeout));
            let service = hyper_util::service::TowerToHyperService::new(app);
            hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
        });
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let mut client = socket.connect(addr).await.expect("connect");
        client
            .write_all(b"GET /big.bin HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .expect("request");
        tokio::time::sleep(timeout * 5).await;
        let served = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the connection ends without the client reading")
            .expect("server task");
        assert!(served.is_err(), "{served:?}");
        // What was already in the kernel's buffers arrives, then the end.
        let mut received = 0_u64;
        let mut chunk = vec![0; 64 * 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), client.read(&mut chunk)).await {
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(n)) => received += n as u64,
                Err(_) => panic!("the connection stayed open"),
            }
        }
        assert!(received < size, "the whole file arrived: {received} bytes");
    }
}
