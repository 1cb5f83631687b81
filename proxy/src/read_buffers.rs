//! Read buffers kept per worker thread between requests.
//!
//! A connection holds no buffer while it waits (a thousand idle keep-alive
//! connections hold no memory), so each request used to take a fresh
//! allocation, and the first split of a head off it a second one (the
//! buffer's shared header). Empty buffers now go back to a short list of
//! the thread's spares and the next request takes one: its allocation is
//! reclaimed in place once the bytes split off it are gone. The list is
//! the thread's own, so no lock is shared across connections.

use std::cell::RefCell;

use bytes::BytesMut;

/// Bytes read at a time, downstream and upstream alike (one size, so
/// that any spare fits either side).
pub const READ_CHUNK: usize = 8 * 1024;

/// Spares a thread keeps: enough for the connections it serves at once in
/// a burst (a proxied request holds two buffers, downstream and upstream,
/// so fifty busy connections give back a hundred at once: with 64 kept,
/// a third of them were dropped and allocated again for the next burst),
/// and at most 1 MiB when they all go idle.
const KEPT: usize = 128;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A buffer with room to read [`READ_CHUNK`] bytes into: a spare when
/// there is one.
pub fn take() -> BytesMut {
    let mut buf = SPARE.with_borrow_mut(Vec::pop).unwrap_or_default();
    buf.reserve(READ_CHUNK);
    buf
}

/// Keeps `buf` as a spare if it is empty and there is room; a buffer
/// holding unread bytes is dropped, never handed to another connection.
pub fn give(buf: BytesMut) {
    if !buf.is_empty() || buf.capacity() == 0 {
        return;
    }
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < KEPT {
            spare.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spare_is_reused_once_what_was_split_off_it_is_gone() {
        let mut buf = take();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let head = buf.split_to(buf.len()).freeze();
        let at = head.as_ptr();
        give(buf);
        drop(head);
        let again = take();
        assert_eq!(again.as_ptr(), at, "the same allocation, from its start");
        assert!(again.capacity() >= READ_CHUNK);
        assert!(again.is_empty());
    }

    #[test]
    fn a_buffer_with_unread_bytes_is_not_kept() {
        let mut buf = take();
        buf.extend_from_slice(b"pipelined");
        give(buf);
        assert!(take().is_empty());
    }
}
