//! The etcd v2 keyspace for the Go flanneld v0.11 runs: a blocking HTTP/1.1 client on
//! keep-alive connections, so a timed PUT or DELETE pays one round trip, as a v3 request on the
//! open gRPC channel does for our agent.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use anyhow::{bail, Context, Result};

/// One keep-alive connection to etcd's v2 API.
pub struct V2Conn {
    addr: SocketAddr,
    stream: BufReader<TcpStream>,
}

impl V2Conn {
    /// Connects to etcd at `addr` (from the calling thread's network namespace).
    pub fn connect(addr: SocketAddr) -> Result<V2Conn> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(V2Conn {
            addr,
            stream: BufReader::new(stream),
        })
    }

    /// Sets `key` to `value`.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        self.request("PUT", key, &format!("value={}", form_encode(value)))
    }

    /// Deletes `key`; a directory with everything under it when `recursive`.
    pub fn delete(&mut self, key: &str, recursive: bool) -> Result<()> {
        let path = if recursive {
            format!("{key}?recursive=true")
        } else {
            key.to_string()
        };
        self.request("DELETE", &path, "")
    }

    /// Sends `method /v2/keys<path>` with a form body and reads the whole answer; any status
    /// but 200 and 201 (404 for a DELETE) is an error.
    fn request(&mut self, method: &str, path: &str, body: &str) -> Result<()> {
        let head = format!(
            "{method} /v2/keys{path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let stream = self.stream.get_mut();
        stream.write_all(format!("{head}{body}").as_bytes())?;
        let status = self.read_response()?;
        match (status, method) {
            (200 | 201, _) | (404, "DELETE") => Ok(()),
            _ => bail!("etcd v2 {method} {path}: HTTP {status}"),
        }
    }

    /// Reads one response (Content-Length or chunked body); returns its status.
    fn read_response(&mut self) -> Result<u16> {
        let mut line = String::new();
        self.stream.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("etcd v2 status line {line:?}"))?;
        let (mut length, mut chunked) = (0usize, false);
        loop {
            line.clear();
            self.stream.read_line(&mut line)?;
            let header = line.trim_end().to_ascii_lowercase();
            if header.is_empty() {
                break;
            }
            if let Some(v) = header.strip_prefix("content-length:") {
                length = v.trim().parse().context("Content-Length")?;
            }
            chunked |= header == "transfer-encoding: chunked";
        }
        if chunked {
            self.skip_chunks()?;
        } else {
            std::io::copy(
                &mut (&mut self.stream).take(length as u64),
                &mut std::io::sink(),
            )?;
        }
        Ok(status)
    }

    fn skip_chunks(&mut self) -> Result<()> {
        let mut line = String::new();
        loop {
            line.clear();
            self.stream.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim(), 16).context("chunk size")?;
            // The chunk and its CRLF.
            std::io::copy(
                &mut (&mut self.stream).take(size as u64 + 2),
                &mut std::io::sink(),
            )?;
            if size == 0 {
                return Ok(());
            }
        }
    }
}

/// `application/x-www-form-urlencoded` value: everything but unreserved characters escaped.
fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
