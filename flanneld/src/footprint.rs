//! What the agent gives back once start-up is over: the heap that held the first listings and
//! dumps, and its mappings of the start-up code.
//!
//! Most of the binary's code runs once (flag parsing, config checks, allocation, the first
//! listing and the first reconcile), but the kernel maps whole blocks of the file around every
//! page touched, so after start-up 5 to 6 MiB of the binary and its libraries stay mapped and
//! counted in the RSS, for code the agent will not run again. Unmapping them leaves the pages in
//! the page cache (shared, clean, reclaimable like any unmapped file page); what the control
//! loop runs later is mapped again on first use. docs/benchmarks.md shows the effect.

use std::fs;

/// Gives back what start-up held ([`release_freed_heap`], [`release_startup_pages`]) and logs
/// how much of the binary was unmapped.
pub(crate) fn release_startup() {
    release_freed_heap();
    let unmapped = release_startup_pages();
    tracing::debug!(
        "start-up done: {} KiB of start-up code unmapped (it stays in the page cache)",
        unmapped / 1024
    );
}

/// Hands the heap freed after start-up back to the kernel: the lease listings and the first
/// kernel dump of thousands of peers are transient, and glibc would otherwise keep their pages.
fn release_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory of the allocator's arenas to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Drops this process's mappings of read-only file pages that hold no private copy (the code
/// and constants of the binary and its libraries); returns how many of their bytes were
/// resident. Nothing is lost: the pages come back from the page cache when touched again.
fn release_startup_pages() -> usize {
    let Ok(smaps) = fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut released = 0;
    for region in droppable_regions(&smaps) {
        // SAFETY: the range is a whole mapping of a read-only file that holds no anonymous
        // (private, written) page: MADV_DONTNEED only unmaps its pages, and the next access
        // reads the same bytes from the file's page cache. The mapping is still the one smaps
        // described: the agent never unloads a library, so nothing unmaps it meanwhile.
        let done = unsafe {
            libc::madvise(
                region.start as *mut libc::c_void,
                region.len,
                libc::MADV_DONTNEED,
            )
        };
        if done == 0 {
            released += region.resident;
        }
    }
    released
}

/// A mapping that can be unmapped without losing anything.
#[derive(Debug, PartialEq, Eq)]
struct Region {
    start: usize,
    len: usize,
    /// Bytes of it resident now.
    resident: usize,
}

/// One mapping of smaps while its lines are read.
struct Candidate {
    region: Region,
    /// Backed by a file and not writable.
    read_only_file: bool,
    /// smaps reported `Anonymous: 0 kB` for it.
    no_private_page: bool,
}

impl Candidate {
    fn droppable(self) -> Option<Region> {
        let Candidate {
            region,
            read_only_file,
            no_private_page,
        } = self;
        (read_only_file && no_private_page && region.resident > 0).then_some(region)
    }
}

/// The mappings of `smaps` (the text of /proc/self/smaps) that are backed by a file, not
/// writable, resident in part, and reported to hold no anonymous page: those whose pages are
/// all clean copies of the file. A read-only mapping that holds anonymous pages (relocated data
/// after RELRO) is kept: unmapping it would lose the relocations.
fn droppable_regions(smaps: &str) -> Vec<Region> {
    let mut regions = Vec::new();
    let mut current: Option<Candidate> = None;
    for line in smaps.lines() {
        if let Some(next) = mapping_header(line) {
            regions.extend(current.replace(next).and_then(Candidate::droppable));
        } else if let Some(c) = current.as_mut() {
            let value = |prefix| line.strip_prefix(prefix).and_then(kilobytes);
            if let Some(rss) = value("Rss:") {
                c.region.resident = rss;
            } else if let Some(anon) = value("Anonymous:") {
                c.no_private_page = anon == 0;
            }
        }
    }
    regions.extend(current.and_then(Candidate::droppable));
    regions
}

/// The mapping that a header line of smaps describes; `None` when the line is not a header.
fn mapping_header(line: &str) -> Option<Candidate> {
    let mut fields = line.split_whitespace();
    let (range, perms) = (fields.next()?, fields.next()?);
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let path = fields.nth(3).unwrap_or("");
    Some(Candidate {
        region: Region {
            start,
            len: end.checked_sub(start)?,
            resident: 0,
        },
        read_only_file: perms.len() == 4 && !perms.contains('w') && path.starts_with('/'),
        no_private_page: false,
    })
}

/// `"  1234 kB"` in bytes.
fn kilobytes(value: &str) -> Option<usize> {
    let kb: usize = value.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a01fa000 r--p 00000000 fd:01 123 /usr/bin/flanneld
Size:               2024 kB
Rss:                 996 kB
Anonymous:             0 kB
55d0a01fa000-55d0a0600000 r-xp 001fa000 fd:01 123 /usr/bin/flanneld
Size:               4120 kB
Rss:                3840 kB
Anonymous:             0 kB
55d0a0600000-55d0a064d000 r--p 00600000 fd:01 123 /usr/bin/flanneld
Size:                308 kB
Rss:                 308 kB
Anonymous:           308 kB
55d0a064d000-55d0a0652000 rw-p 0064d000 fd:01 123 /usr/bin/flanneld
Size:                 20 kB
Rss:                  20 kB
Anonymous:            20 kB
55d0a1000000-55d0a1093000 rw-p 00000000 00:00 0                          [heap]
Size:                588 kB
Rss:                 432 kB
Anonymous:           432 kB
7f0000000000-7f0000001000 r--p 00000000 fd:01 456 /usr/lib/x86_64-linux-gnu/libm.so.6
Size:                  4 kB
Rss:                   0 kB
Anonymous:             0 kB
7ffc00000000-7ffc00002000 r-xp 00000000 00:00 0                          [vdso]
Size:                  8 kB
Rss:                   4 kB
Anonymous:             0 kB
7f0000100000-7f0000256000 r-xp 00028000 fd:01 789 /usr/lib/x86_64-linux-gnu/libc.so.6
Size:               1368 kB
Rss:                1036 kB
Anonymous:             0 kB
";

    #[test]
    fn only_clean_read_only_file_mappings_are_dropped() {
        let regions = droppable_regions(SMAPS);
        let starts: Vec<usize> = regions.iter().map(|r| r.start).collect();
        // The rodata and the text of the binary, and libc's text; not the relocated RELRO
        // data (anonymous pages), the writable data, the heap, the vdso or a mapping with
        // nothing resident.
        assert_eq!(starts, vec![0x55d0a0000000, 0x55d0a01fa000, 0x7f0000100000]);
        assert_eq!(regions[1].len, 0x406000);
        assert_eq!(regions[1].resident, 3840 * 1024);
    }

    #[test]
    fn a_truncated_or_odd_smaps_drops_nothing_it_cannot_prove_clean() {
        assert!(droppable_regions("").is_empty());
        assert!(droppable_regions("not a mapping\nRss: 4 kB\n").is_empty());
        // Without an `Anonymous: 0 kB` line nothing proves the pages clean: kept.
        let no_anon_line = "7f0000100000-7f0000101000 r-xp 0 fd:01 789 /lib/x.so\nRss: 4 kB\n";
        assert!(droppable_regions(no_anon_line).is_empty());
        let clean = format!("{no_anon_line}Anonymous: 0 kB\n");
        assert_eq!(droppable_regions(&clean).len(), 1);
    }
}
