//! Static files (`--public`) against a real server on `127.0.0.1:0`, with raw HTTP/1.1
//! requests: what is served, symbolic links out of the directory, FIFOs and sockets in
//! it, and a client that stops reading a large file.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{Reply, TestServer, WAIT, http, http_get};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A scratch directory holding `public/` (the served one) and `secret.txt` beside it,
/// removed on drop.
struct Site {
    dir: PathBuf,
}

impl Site {
    fn new() -> anyhow::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "static-files-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("public/sub"))?;
        std::fs::write(dir.join("public/index.html"), "<h1>home</h1>")?;
        std::fs::write(dir.join("public/app.js"), "export const x = 1;\n")?;
        std::fs::write(dir.join("public/sub/index.html"), "<h1>sub</h1>")?;
        std::fs::write(dir.join("secret.txt"), "top secret")?;
        Ok(Self { dir })
    }

    fn public(&self) -> PathBuf {
        self.dir.join("public")
    }

    async fn serve(&self) -> anyhow::Result<TestServer> {
        let public = self.public();
        TestServer::with(|c| c.public = Some(public)).await
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn request(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<Reply> {
    http(addr, method, path, "").await
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<Reply> {
    http_get(addr, path).await
}

#[tokio::test]
async fn files_index_pages_types_head_and_redirects() -> anyhow::Result<()> {
    let site = Site::new()?;
    #[cfg(unix)]
    std::os::unix::fs::symlink("index.html", site.public().join("alias.html"))?;
    let server = site.serve().await?;
    let addr = server.addr;

    let home = get(addr, "/").await?;
    assert_eq!((home.status, home.text().as_str()), (200, "<h1>home</h1>"));
    assert!(
        home.header("content-type")
            .is_some_and(|t| t.starts_with("text/html"))
    );
    assert_eq!(get(addr, "/index.html").await?.text(), "<h1>home</h1>");
    let script = get(addr, "/app.js").await?;
    assert_eq!(script.status, 200);
    assert!(
        script
            .header("content-type")
            .is_some_and(|t| t.contains("javascript")),
        "{script:?}"
    );
    let head = request(addr, "HEAD", "/app.js").await?;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("20"));
    assert!(head.body.is_empty(), "{head:?}");

    let redirect = get(addr, "/sub").await?;
    assert!(matches!(redirect.status, 301 | 307 | 308), "{redirect:?}");
    assert_eq!(redirect.header("location"), Some("/sub/"));
    assert_eq!(get(addr, "/sub/").await?.text(), "<h1>sub</h1>");

    assert_eq!(get(addr, "/missing.html").await?.status, 404);
    assert_eq!(get(addr, "/app.js/").await?.status, 404);
    assert_eq!(request(addr, "POST", "/").await?.status, 405);
    #[cfg(unix)]
    assert_eq!(get(addr, "/alias.html").await?.text(), "<h1>home</h1>");
    Ok(())
}

#[cfg(unix)]
#[tokio::test]
async fn links_out_of_the_directory_are_not_followed() -> anyhow::Result<()> {
    use std::os::unix::fs::symlink;
    let site = Site::new()?;
    let public = site.public();
    symlink("../secret.txt", public.join("leak.txt"))?;
    symlink(site.dir.join("secret.txt"), public.join("absolute.txt"))?;
    symlink("..", public.join("up"))?;
    symlink("/etc", public.join("etc"))?;
    let server = site.serve().await?;
    for path in [
        "/leak.txt",
        "/absolute.txt",
        "/up/secret.txt",
        "/up/",
        "/etc/passwd",
        "/etc/hostname",
        // Plain traversal, refused before any link is looked at.
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/sub/..%2f..%2fsecret.txt",
    ] {
        let reply = get(server.addr, path).await?;
        assert_eq!(reply.status, 404, "{path}: {reply:?}");
        assert!(!reply.text().contains("secret"), "{path}: {reply:?}");
    }
    Ok(())
}

#[cfg(unix)]
/// Opens `fifo` for writing and closes it, which ends a reader's `open()` blocked on it.
fn release(fifo: &Path) -> anyhow::Result<()> {
    std::fs::OpenOptions::new().write(true).open(fifo)?;
    Ok(())
}

#[cfg(unix)]
#[tokio::test]
async fn fifos_and_sockets_are_refused_without_blocking() -> anyhow::Result<()> {
    let site = Site::new()?;
    let public = site.public();
    let fifo = public.join("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status()?;
    anyhow::ensure!(made.success(), "mkfifo failed");
    let _socket = std::os::unix::net::UnixListener::bind(public.join("socket"))?;
    let server = site.serve().await?;
    for path in ["/fifo", "/socket"] {
        for method in ["GET", "HEAD"] {
            match tokio::time::timeout(Duration::from_secs(2), request(server.addr, method, path))
                .await
            {
                Ok(reply) => {
                    let reply = reply?;
                    assert_eq!(reply.status, 404, "{method} {path}: {reply:?}");
                }
                Err(_) => {
                    // A blocking thread is stuck in `open()`: free it, or this test's
                    // runtime would wait for it forever.
                    tokio::task::spawn_blocking(move || release(&fifo)).await??;
                    anyhow::bail!("{method} {path} is stuck");
                }
            }
        }
    }
    server.stop().await
}

/// A sparse file of `size` bytes in `public/`.
fn large_file(site: &Site, name: &str, size: u64) -> anyhow::Result<()> {
    std::fs::File::create(site.public().join(name))?.set_len(size)?;
    Ok(())
}

#[tokio::test]
async fn a_client_that_reads_gets_a_large_file_whole() -> anyhow::Result<()> {
    let site = Site::new()?;
    let size: u64 = 8 << 20;
    large_file(&site, "big.bin", size)?;
    let public = site.public();
    let server = TestServer::with(|c| {
        c.public = Some(public);
        c.write_timeout = Duration::from_millis(200);
    })
    .await?;
    let reply = get(server.addr, "/big.bin").await?;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len() as u64, size);
    Ok(())
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_the_write_timeout() -> anyhow::Result<()> {
    let site = Site::new()?;
    // More than hyper's buffer and both kernels' socket buffers hold.
    let size: u64 = 32 << 20;
    large_file(&site, "big.bin", size)?;
    let public = site.public();
    let write_timeout = Duration::from_millis(200);
    let server = TestServer::with(|c| {
        c.public = Some(public);
        c.write_timeout = write_timeout;
    })
    .await?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut client = socket.connect(server.addr).await?;
    client
        .write_all(format!("GET /big.bin HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr).as_bytes())
        .await?;
    // Not reading for a few write timeouts...
    tokio::time::sleep(write_timeout * 5).await;
    // ...then what was left in the kernel's buffers arrives, and the end; had the
    // server waited, the whole file would now arrive.
    let mut received = 0_u64;
    let mut chunk = vec![0; 64 * 1024];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, client.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => received += n as u64,
            Err(_) => anyhow::bail!("the connection is still open after {received} bytes"),
        }
    }
    assert!(received < size, "the whole file arrived: {received} bytes");
    Ok(())
}
