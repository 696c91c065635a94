//! The kubelet's plugin watcher dials the registration socket by its path
//! with grpc-go and no authority override, so its HTTP/2 `:authority` is the
//! percent-encoded path (`%2Fvar%2Flib%2Fkubelet%2F...`). h2 refuses a `%`
//! in a host and resets every such stream (PROTOCOL_ERROR), so the kubelet
//! could never call GetInfo (hyperium/h2#487, unfixed). This relay sits
//! between the registration socket and our server and rewrites that one
//! header to `localhost` (what the kubelet's own CSI client sends); every
//! other byte passes unchanged. An authority means nothing on a unix socket.
//!
//! Only complete header blocks (HEADERS with END_HEADERS) are rewritten; a
//! block split over CONTINUATION frames, or one that does not parse, passes
//! as it came. A literal with incremental indexing keeps that form, so the
//! server's dynamic table gets the entry at the same index as the client's
//! (its size differs; the few requests of a registration never evict).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::UnixStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// `:authority` in HPACK's static table.
const AUTHORITY_INDEX: u64 = 1;
const LOCALHOST: &[u8] = b"localhost";

/// A connection for the server: the client's bytes with `:authority`
/// rewritten, the server's answers passed back as they are.
pub fn relay(client: UnixStream) -> DuplexStream {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = tokio::io::split(theirs);
        let up = async {
            let _ = forward_rewritten(&mut client_read, &mut server_write).await;
            let _ = server_write.shutdown().await;
        };
        let down = async {
            let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            let _ = client_write.shutdown().await;
        };
        tokio::join!(up, down);
    });
    ours
}

async fn forward_rewritten<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(from: &mut R, to: &mut W) -> std::io::Result<()> {
    let mut preface = [0u8; 24];
    from.read_exact(&mut preface).await?;
    to.write_all(&preface).await?;
    if preface != PREFACE {
        // not HTTP/2 with prior knowledge: nothing of ours to rewrite
        tokio::io::copy(from, to).await?;
        return Ok(());
    }
    loop {
        let mut head = [0u8; 9];
        match from.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        from.read_exact(&mut payload).await?;
        match rewrite_frame(&head, &payload) {
            Some(frame) => to.write_all(&frame).await?,
            None => {
                to.write_all(&head).await?;
                to.write_all(&payload).await?;
            }
        }
        to.flush().await?;
    }
}

/// The frame with its `:authority` rewritten, or `None` to pass it unchanged.
fn rewrite_frame(head: &[u8; 9], payload: &[u8]) -> Option<Vec<u8>> {
    let (kind, flags) = (head[3], head[4]);
    if kind != HEADERS || flags & END_HEADERS == 0 {
        return None;
    }
    let mut start = 0;
    let mut end = payload.len();
    if flags & PADDED != 0 {
        let pad = *payload.first()? as usize;
        start = 1;
        end = end.checked_sub(pad)?;
    }
    let priority = if flags & PRIORITY != 0 { payload.get(start..start + 5)? } else { &[] };
    start += priority.len();
    let block = rewrite_block(payload.get(start..end)?)?;
    let body_len = priority.len() + block.len();
    let len = u32::try_from(body_len).ok().filter(|l| *l < 1 << 24)?.to_be_bytes();
    let mut out = Vec::with_capacity(9 + body_len);
    out.extend_from_slice(&len[1..]);
    out.extend_from_slice(&[kind, flags & !PADDED]);
    out.extend_from_slice(&head[5..9]);
    out.extend_from_slice(priority);
    out.extend_from_slice(&block);
    Some(out)
}

/// An HPACK integer with an N-bit prefix at `buf[*pos]`.
fn integer(buf: &[u8], pos: &mut usize, bits: u32) -> Option<u64> {
    let mask = (1u64 << bits) - 1;
    let mut value = u64::from(*buf.get(*pos)?) & mask;
    *pos += 1;
    if value < mask {
        return Some(value);
    }
    let mut shift = 0;
    loop {
        let b = *buf.get(*pos)?;
        *pos += 1;
        value = value.checked_add(u64::from(b & 0x7f).checked_shl(shift)?)?;
        shift += 7;
        if b & 0x80 == 0 || shift > 56 {
            return (b & 0x80 == 0).then_some(value);
        }
    }
}

/// Skips an HPACK string literal at `buf[*pos]`.
fn skip_string(buf: &[u8], pos: &mut usize) -> Option<()> {
    let len = usize::try_from(integer(buf, pos, 7)?).ok()?;
    *pos = pos.checked_add(len).filter(|end| *end <= buf.len())?;
    Some(())
}

/// The header block with every `:authority` literal's value replaced.
fn rewrite_block(block: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len());
    let mut pos = 0;
    while pos < block.len() {
        let first = block[pos];
        let start = pos;
        let bits = match first {
            b if b & 0x80 != 0 => {
                integer(block, &mut pos, 7)?; // indexed field
                out.extend_from_slice(&block[start..pos]);
                continue;
            }
            b if b & 0xc0 == 0x40 => 6, // literal, incremental indexing
            b if b & 0xe0 == 0x20 => {
                integer(block, &mut pos, 5)?; // dynamic table size update
                out.extend_from_slice(&block[start..pos]);
                continue;
            }
            _ => 4, // literal without indexing / never indexed
        };
        let index = integer(block, &mut pos, bits)?;
        if index == 0 {
            skip_string(block, &mut pos)?; // a literal name: not the static :authority
        }
        let value_start = pos;
        skip_string(block, &mut pos)?;
        if index == AUTHORITY_INDEX {
            // the same representation, index 1, then "localhost" (no Huffman)
            out.extend_from_slice(&block[start..value_start]);
            out.push(LOCALHOST.len() as u8);
            out.extend_from_slice(LOCALHOST);
        } else {
            out.extend_from_slice(&block[start..pos]);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(prefix: u8, value: &[u8]) -> Vec<u8> {
        let mut v = vec![prefix, value.len() as u8];
        v.extend_from_slice(value);
        v
    }

    #[test]
    fn rewrites_the_authority_literal_in_each_form() {
        for prefix in [0x41u8, 0x01, 0x11] {
            // :method POST (indexed 3), :authority <path>, :path (literal 4)
            let mut block = vec![0x83];
            block.extend(lit(prefix, b"%2Fvar%2Flib%2Fkubelet%2Fx.sock"));
            block.extend(lit(0x44, b"/pluginregistration.Registration/GetInfo"));
            let mut want = vec![0x83];
            want.extend(lit(prefix, b"localhost"));
            want.extend(lit(0x44, b"/pluginregistration.Registration/GetInfo"));
            assert_eq!(rewrite_block(&block).unwrap(), want, "prefix {prefix:#x}");
        }
    }

    #[test]
    fn leaves_other_fields_and_indexed_authority_alone() {
        // an indexed :authority (already in the dynamic table), a size update,
        // a literal with a literal name, content-type literal (index 31, 4-bit form 0x0f 0x10)
        let mut block = vec![0xbe, 0x3f, 0xe1, 0x1f];
        block.push(0x40);
        block.extend(lit(0x04, b"name")[1..].iter()); // name string "name"
        block.extend(lit(0x05, b"value")[1..].iter());
        block.extend([0x0f, 0x10]);
        block.extend(lit(0x10, b"application/grpc")[1..].iter());
        assert_eq!(rewrite_block(&block).unwrap(), block);
    }

    #[test]
    fn a_headers_frame_loses_its_padding_and_keeps_priority() {
        let block = lit(0x41, b"%2Fsock");
        let mut payload = vec![2]; // pad length
        payload.extend([0, 0, 0, 0, 7]); // priority
        payload.extend(&block);
        payload.extend([0, 0]);
        let len = (payload.len() as u32).to_be_bytes();
        let head = [len[1], len[2], len[3], HEADERS, END_HEADERS | PADDED | PRIORITY, 0, 0, 0, 1];
        let out = rewrite_frame(&head, &payload).unwrap();
        let mut want_body = vec![0, 0, 0, 0, 7];
        want_body.extend(lit(0x41, b"localhost"));
        assert_eq!(&out[..3], &(want_body.len() as u32).to_be_bytes()[1..]);
        assert_eq!(out[3..9], [HEADERS, END_HEADERS | PRIORITY, 0, 0, 0, 1]);
        assert_eq!(&out[9..], &want_body[..]);
        // a DATA frame, a HEADERS frame without END_HEADERS: unchanged
        assert!(rewrite_frame(&[0, 0, 1, 0, 0, 0, 0, 0, 1], &[0]).is_none());
        assert!(rewrite_frame(&[0, 0, 1, HEADERS, 0, 0, 0, 0, 1], &[0x82]).is_none());
        // a truncated block: unchanged
        assert!(rewrite_frame(&[0, 0, 2, HEADERS, END_HEADERS, 0, 0, 0, 1], &[0x41, 0x09]).is_none());
    }
}
