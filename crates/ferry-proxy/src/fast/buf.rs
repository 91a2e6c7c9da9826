//! The per-worker buffer free list: a connection's read and write buffers
//! are taken from it when a request needs them and given back when it is
//! done, so that memory follows the requests in progress rather than the
//! connections open.

/// Read buffer for upstream responses.
const RESPONSE_BUF: usize = 16 * 1024;

/// The two kinds of read buffer, and their sizes.
#[derive(Clone, Copy)]
pub(super) enum Class {
    /// Bytes from the client.
    Input = 0,
    /// Bytes from the upstream.
    Response = 1,
    /// A head being written (to the upstream, then to the client).
    Out = 2,
}

const CLASS_SIZE: [usize; 3] = [4096, RESPONSE_BUF, 1024];

/// Buffers kept per class by each worker thread.
const FREE_BUFFERS: usize = 64;

thread_local! {
    static FREE: std::cell::RefCell<[Vec<Vec<u8>>; 3]> =
        const { std::cell::RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// A read buffer taken from the worker's free list when first needed and
/// given back when released (or dropped), so that memory follows the
/// requests in progress rather than the connections open, as nginx's does.
pub(super) struct Buf {
    vec: Vec<u8>,
    class: Class,
}

impl Buf {
    pub(super) fn new(class: Class) -> Buf {
        Buf {
            vec: Vec::new(),
            class,
        }
    }

    /// The buffer, taken from the free list if not held yet.
    pub(super) fn get(&mut self) -> &mut Vec<u8> {
        if self.vec.capacity() == 0 {
            let class = self.class as usize;
            self.vec = FREE
                .with(|free| free.borrow_mut()[class].pop())
                .unwrap_or_else(|| Vec::with_capacity(CLASS_SIZE[class]));
        }
        &mut self.vec
    }

    /// Give the buffer back (its contents are discarded).
    pub(super) fn release(&mut self) {
        let class = self.class as usize;
        let mut vec = std::mem::take(&mut self.vec);
        let size = CLASS_SIZE[class];
        if (size..=4 * size).contains(&vec.capacity()) {
            vec.clear();
            // `try_with`: a connection may be dropped while its thread exits.
            let _ = FREE.try_with(|free| {
                let mut free = free.borrow_mut();
                if free[class].len() < FREE_BUFFERS {
                    free[class].push(vec);
                }
            });
        }
    }

    /// The bytes, leaving the buffer empty (not returned to the free list).
    pub(super) fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.vec)
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        self.release();
    }
}

impl std::ops::Deref for Buf {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.vec
    }
}

impl std::ops::DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.vec
    }
}
