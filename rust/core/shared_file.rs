//! The shared table's file: created, sized, replaced and locked so that processes opening
//! it together take turns (`SharedState::open`).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::OnceLock;

use super::{Region, SharedState, MAGIC, TABLE_BYTES};

impl SharedState {
    /// The table in `path`, created (zeroed) when it is missing or not one of ours. Every
    /// process of a server opens the same file; the supervisor removes it at start.
    pub fn open(path: &Path) -> std::io::Result<SharedState> {
        let (map, fresh) = open_table(path, TABLE_BYTES, MAGIC)?;
        let state = SharedState {
            region: Region::File(map),
            column: OnceLock::new(),
        };
        if fresh {
            state.init();
        }
        Ok(state)
    }
}

/// A shared table of `bytes` bytes in `path`, mapped, and whether it is new (zeroed: its
/// header is the caller's to write; the first 8 bytes hold `magic` once it is written).
///
/// Openers take turns (an exclusive `flock` on the file while it is sized and its header
/// checked), so two processes starting together cannot reset each other's slots. A file
/// is never shrunk while someone may map it (that would fault their reads): one of
/// another length (another layout) is replaced by a new file renamed over it. The balancer
/// state (`shared.rs`) and the load signals (`load.rs`) are such tables.
pub(crate) fn open_table(path: &Path, bytes: usize, magic: u64) -> std::io::Result<(memmap2::MmapMut, bool)> {
    let file = loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        lock(&file)?;
        // Another opener may have renamed a new table over the path while this one
        // waited for the lock of the old: open that one instead.
        if !same_file(&file, path)? {
            continue;
        }
        match file.metadata()?.len() {
            0 => file.set_len(bytes as u64)?, // new: grown, never shrunk
            len if len == bytes as u64 => {}
            _ => break replace(path, bytes)?,
        }
        break file;
    };
    // SAFETY: the file is ours (the data dir is 0700), `bytes` long and never shrunk, and
    // only ever accessed through atomics, by this and the other processes of the server.
    let mut map = unsafe { memmap2::MmapMut::map_mut(&file)? };
    let found = u64::from_ne_bytes(map[..8].try_into().expect("8 bytes"));
    if found != magic && found != 0 {
        // Another layout's table of the same length: start from nothing at all. No
        // process of this layout maps it yet: they would have found our magic.
        map.fill(0);
    }
    // Explicitly: the mapping holds the open file, so closing it would not release the
    // lock. The caller then writes a fresh table's header; another opener in between also
    // finds it fresh and writes the same header (never the slots), which is harmless.
    unlock(&file)?;
    Ok((map, found != magic))
}

/// Waits for the exclusive lock of `file` (held until `unlock`, or until the file and every
/// mapping of it are closed).
fn lock(file: &File) -> std::io::Result<()> {
    flock(file, libc::LOCK_EX)
}

fn unlock(file: &File) -> std::io::Result<()> {
    flock(file, libc::LOCK_UN)
}

fn flock(file: &File, operation: libc::c_int) -> std::io::Result<()> {
    // SAFETY: flock on a descriptor this File owns; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether `file` is still the one at `path`.
fn same_file(file: &File, path: &Path) -> std::io::Result<bool> {
    let (open, named) = (file.metadata()?, std::fs::metadata(path)?);
    Ok(open.dev() == named.dev() && open.ino() == named.ino())
}

/// A new, empty table renamed over `path`, locked (whoever maps the old file keeps it).
fn replace(path: &Path, bytes: usize) -> std::io::Result<File> {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".new-{}", std::process::id()));
    let new = Path::new(&name);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(new)?;
    lock(&file)?;
    file.set_len(bytes as u64)?;
    std::fs::rename(new, path)?;
    Ok(file)
}
