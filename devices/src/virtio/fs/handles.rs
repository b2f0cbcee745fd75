//! The open-handle table both backends keep: bounded (EMFILE when full),
//! each handle tied to the node it was opened on (EBADF otherwise).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::filesystem::{FsResult, Handle, Inode, errno};

/// Locks `m`, also after a panic elsewhere poisoned it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a handle refers to knows its node.
pub trait OnNode {
    fn inode(&self) -> Inode;
}

/// Open handles, at most `max`.
#[derive(Debug)]
pub struct HandleTable<T> {
    map: HashMap<Handle, Arc<T>>,
    next: Handle,
    max: usize,
}

impl<T: OnNode> HandleTable<T> {
    pub fn new(max: usize) -> Self {
        HandleTable {
            map: HashMap::new(),
            next: 1,
            max,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_full(&self) -> bool {
        self.map.len() >= self.max
    }

    /// A new handle for `open`, or EMFILE.
    pub fn insert(&mut self, open: T) -> FsResult<Handle> {
        if self.is_full() {
            return Err(errno::EMFILE);
        }
        let fh = self.next;
        self.next += 1;
        self.map.insert(fh, Arc::new(open));
        Ok(fh)
    }

    /// The handle `fh`, which must belong to `inode`.
    pub fn get(&self, inode: Inode, fh: Handle) -> FsResult<Arc<T>> {
        match self.map.get(&fh) {
            Some(h) if h.inode() == inode => Ok(Arc::clone(h)),
            _ => Err(errno::EBADF),
        }
    }

    /// Closes `fh`, which must belong to `inode` (reads in flight keep
    /// their `Arc`).
    pub fn remove(&mut self, inode: Inode, fh: Handle) -> FsResult<()> {
        self.get(inode, fh)?;
        self.map.remove(&fh);
        Ok(())
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Open(Inode);

    impl OnNode for Open {
        fn inode(&self) -> Inode {
            self.0
        }
    }

    #[test]
    fn bounded_and_tied_to_their_node() {
        let mut t = HandleTable::new(2);
        let a = t.insert(Open(5)).expect("first");
        let b = t.insert(Open(6)).expect("second");
        assert_ne!(a, b);
        assert!(t.is_full());
        assert_eq!(t.insert(Open(7)).err(), Some(errno::EMFILE));
        assert_eq!(
            t.get(6, a).err(),
            Some(errno::EBADF),
            "handle of another node"
        );
        assert_eq!(t.get(5, 99).err(), Some(errno::EBADF), "unknown handle");
        assert_eq!(t.get(5, a).map(|h| h.0).ok(), Some(5));
        assert_eq!(t.remove(6, a).err(), Some(errno::EBADF));
        t.remove(5, a).expect("close");
        assert_eq!(t.remove(5, a).err(), Some(errno::EBADF), "closed twice");
        assert_eq!(t.len(), 1);
        let c = t.insert(Open(8)).expect("room again");
        assert!(c > b, "handles are not reused");
        t.clear();
        assert_eq!(t.len(), 0);
    }
}
