//! Pilot records in fixed-size chunks, addressed by a `u32` slot.
//!
//! A plain `Vec` would double its buffer as the fleet grows, copying every record while
//! the index's write lock is held (tens of milliseconds at a million pilots) and keeping up
//! to half of it unused. Chunks never move once allocated and waste at most one chunk.

use std::ops::{Index, IndexMut};

/// Records per chunk.
const CHUNK: usize = 4096;

#[derive(Debug)]
pub(crate) struct Slab<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self { chunks: Vec::new(), len: 0 }
    }
}

impl<T> Slab<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Appends a record and returns its slot.
    pub fn push(&mut self, value: T) -> u32 {
        if self.chunks.last().is_none_or(|chunk| chunk.len() == CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        self.chunks.last_mut().expect("a chunk with room").push(value);
        self.len += 1;
        u32::try_from(self.len - 1).expect("fewer than 4 billion records")
    }

    /// Records in slot order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }
}

impl<T> Index<u32> for Slab<T> {
    type Output = T;

    fn index(&self, slot: u32) -> &T {
        let slot = slot as usize;
        &self.chunks[slot / CHUNK][slot % CHUNK]
    }
}

impl<T> IndexMut<u32> for Slab<T> {
    fn index_mut(&mut self, slot: u32) -> &mut T {
        let slot = slot as usize;
        &mut self.chunks[slot / CHUNK][slot % CHUNK]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_address_records_across_chunks() {
        let mut slab = Slab::default();
        for n in 0..(CHUNK * 2 + 10) {
            assert_eq!(slab.push(n) as usize, n);
        }
        assert_eq!((slab[0], slab[CHUNK as u32], slab[(2 * CHUNK + 9) as u32]), (0, CHUNK, 2 * CHUNK + 9));
        slab[5] = 99;
        assert_eq!(slab.iter().nth(5), Some(&99));
        assert_eq!(slab.len(), 2 * CHUNK + 10);
        assert_eq!(slab.chunks.len(), 3);
    }
}
