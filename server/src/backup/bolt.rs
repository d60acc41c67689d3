//! bbolt's file format, the database etcd keeps its backend in and streams as its snapshot: a writer
//! that lays sorted buckets out page by page in one pass over a planned layout, and a reader that
//! checks every page of a file it does not trust before handing out an entry.
//!
//! Layout written: metas at pages 0 and 1, an empty freelist at 2, the root bucket's page at 3, then
//! each bucket's leaves followed by its branch levels, root last. Every page is reachable, so the
//! file passes bbolt's own consistency check (`etcdctl snapshot status` runs it).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

/// The page size of written files: bbolt's default on the platforms etcd runs on.
pub const PAGE_SIZE: usize = 4096;
const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;
const FREELIST_PAGE: u16 = 0x10;
const BUCKET_LEAF: u32 = 0x01;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BUCKET_HEADER: usize = 16;
/// Bytes of the meta covered by its checksum: everything before the checksum itself.
const META_CHECKSUMMED: usize = 56;
/// Written when the freelist is not kept in the file; the reader then cannot tell free pages.
const NO_FREELIST: u64 = u64::MAX;
const FREELIST_ID: u64 = 2;
const ROOT_ID: u64 = 3;
const FIRST_BUCKET_PAGE: u64 = 4;
/// Deeper trees than this are corrupt: a 4 KiB page holds at least 2 children of 1.5 MiB keys.
const MAX_DEPTH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    #[error("cannot read the database: {0}")]
    Io(#[from] io::Error),
    #[error("not a bbolt database: {0}")]
    NotBolt(String),
    #[error(
        "the database is truncated: its meta page says {claimed} bytes ({pages} pages of {page_size}), the file holds {actual}"
    )]
    Truncated {
        claimed: u64,
        pages: u64,
        page_size: usize,
        actual: u64,
    },
    #[error("the database is corrupt at page {page}: {reason}")]
    Corrupt { page: u64, reason: String },
}

fn corrupt(page: u64, reason: impl Into<String>) -> BoltError {
    BoltError::Corrupt {
        page,
        reason: reason.into(),
    }
}

/// FNV-1a, 64 bits: bbolt's meta checksum.
fn fnv64a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().expect("two bytes"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Receives a bucket's entries one at a time, key then value.
pub type EntrySink<'a> = dyn FnMut(&[u8], &[u8]) -> io::Result<()> + 'a;
/// Receives the elements of a leaf page as read: key, value and element flags.
type ElementSink<'a, E> = dyn FnMut(&[u8], &[u8], u32) -> Result<(), E> + 'a;

/// What a database holds: buckets in name order, each visited in key order as often as the writer
/// asks (twice: once to plan the pages, once to fill them). Both visits must see the same entries.
pub trait Contents {
    fn bucket_names(&self) -> Vec<Vec<u8>>;
    fn visit(&self, bucket: usize, entry: &mut EntrySink<'_>) -> io::Result<()>;
}

/// Elements that share one page (or one page with its overflow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Group {
    count: usize,
    bytes: usize,
    first_key_len: usize,
}

impl Group {
    fn pages(&self) -> u64 {
        self.bytes.div_ceil(PAGE_SIZE) as u64
    }
}

/// Packs elements into pages in order: a page takes elements while they fit, and always at least
/// one (a larger element spills into overflow pages).
#[derive(Default)]
struct Packer {
    groups: Vec<Group>,
}

impl Packer {
    fn push(&mut self, element: usize, key_len: usize) {
        match self.groups.last_mut() {
            Some(group) if group.bytes + element <= PAGE_SIZE && group.count < usize::from(u16::MAX) => {
                group.count += 1;
                group.bytes += element;
            }
            _ => self.groups.push(Group {
                count: 1,
                bytes: PAGE_HEADER + element,
                first_key_len: key_len,
            }),
        }
    }

    fn finish(mut self) -> Vec<Group> {
        if self.groups.is_empty() {
            self.groups.push(Group {
                count: 0,
                bytes: PAGE_HEADER,
                first_key_len: 0,
            });
        }
        self.groups
    }
}

/// One bucket's pages: levels from the leaves up, each page's ID, and the root.
#[derive(Debug)]
struct BucketPlan {
    name: Vec<u8>,
    levels: Vec<Vec<Group>>,
    ids: Vec<Vec<u64>>,
}

impl BucketPlan {
    fn new(name: Vec<u8>, leaves: Vec<Group>, first_id: u64) -> BucketPlan {
        let mut levels = vec![leaves];
        while levels.last().expect("a level").len() > 1 {
            let mut packer = Packer::default();
            for child in levels.last().expect("a level") {
                packer.push(ELEMENT + child.first_key_len, child.first_key_len);
            }
            levels.push(packer.finish());
        }
        let mut next = first_id;
        let ids = levels
            .iter()
            .map(|level| {
                level
                    .iter()
                    .map(|group| {
                        let id = next;
                        next += group.pages();
                        id
                    })
                    .collect()
            })
            .collect();
        BucketPlan { name, levels, ids }
    }

    fn root(&self) -> u64 {
        self.ids.last().expect("a level")[0]
    }

    fn pages(&self) -> u64 {
        self.levels.iter().flatten().map(Group::pages).sum()
    }
}

/// Where every page of a database goes, computed before the first byte is written so the metas at
/// the front can name the root and the size.
#[derive(Debug)]
pub struct Layout {
    buckets: Vec<BucketPlan>,
    /// The root bucket's page: one element per bucket.
    root: Group,
    pages: u64,
}

impl Layout {
    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.pages * PAGE_SIZE as u64
    }
}

/// Plans the pages of `contents`, checking names and keys are strictly ascending.
pub fn plan(contents: &dyn Contents) -> io::Result<Layout> {
    let names = contents.bucket_names();
    if names.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err(io::Error::other("bucket names must be unique and in order"));
    }
    let mut next = FIRST_BUCKET_PAGE;
    let mut buckets = Vec::with_capacity(names.len());
    for (index, name) in names.into_iter().enumerate() {
        let mut packer = Packer::default();
        let mut previous: Option<Vec<u8>> = None;
        contents.visit(index, &mut |key, value| {
            if previous.as_deref().is_some_and(|p| p >= key) {
                return Err(io::Error::other(format!(
                    "bucket {}: keys must be unique and in order",
                    String::from_utf8_lossy(&name)
                )));
            }
            previous = Some(key.to_vec());
            packer.push(ELEMENT + key.len() + value.len(), key.len());
            Ok(())
        })?;
        let bucket = BucketPlan::new(name, packer.finish(), next);
        next += bucket.pages();
        buckets.push(bucket);
    }
    let root = Group {
        count: buckets.len(),
        bytes: PAGE_HEADER
            + buckets
                .iter()
                .map(|b| ELEMENT + b.name.len() + BUCKET_HEADER)
                .sum::<usize>(),
        first_key_len: 0,
    };
    if root.bytes > PAGE_SIZE {
        return Err(io::Error::other("too many buckets for one root page"));
    }
    Ok(Layout {
        buckets,
        root,
        pages: next,
    })
}

fn page_header(out: &mut Vec<u8>, id: u64, flags: u16, count: usize, pages: u64) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(count as u16).to_le_bytes());
    out.extend_from_slice(&((pages - 1) as u32).to_le_bytes());
}

fn pad(page: &mut Vec<u8>) {
    page.resize(page.len().div_ceil(PAGE_SIZE) * PAGE_SIZE, 0);
}

fn meta_page(id: u64, layout: &Layout) -> Vec<u8> {
    let mut page = Vec::with_capacity(PAGE_SIZE);
    page_header(&mut page, id, META_PAGE, 0, 1);
    let start = page.len();
    page.extend_from_slice(&MAGIC.to_le_bytes());
    page.extend_from_slice(&VERSION.to_le_bytes());
    page.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
    page.extend_from_slice(&0u32.to_le_bytes());
    page.extend_from_slice(&ROOT_ID.to_le_bytes());
    page.extend_from_slice(&0u64.to_le_bytes());
    page.extend_from_slice(&FREELIST_ID.to_le_bytes());
    page.extend_from_slice(&layout.pages.to_le_bytes());
    // Transaction IDs 0 and 1, as a freshly created database has them.
    page.extend_from_slice(&id.to_le_bytes());
    let checksum = fnv64a(&page[start..start + META_CHECKSUMMED]);
    page.extend_from_slice(&checksum.to_le_bytes());
    pad(&mut page);
    page
}

/// A leaf or branch page: element headers first, then keys (and values) in the same order.
struct PageBuilder {
    flags: u16,
    elements: Vec<(u32, Vec<u8>, Vec<u8>, u64)>,
}

impl PageBuilder {
    fn new(flags: u16) -> PageBuilder {
        PageBuilder {
            flags,
            elements: Vec::new(),
        }
    }

    fn build(&mut self, id: u64, expected: Group) -> io::Result<Vec<u8>> {
        let count = self.elements.len();
        let mut page = Vec::with_capacity(expected.bytes);
        page_header(&mut page, id, self.flags, count, expected.pages());
        let mut data = PAGE_HEADER + count * ELEMENT;
        for (index, (flags, key, value, child)) in self.elements.iter().enumerate() {
            let pos = (data - (PAGE_HEADER + index * ELEMENT)) as u32;
            if self.flags == BRANCH_PAGE {
                page.extend_from_slice(&pos.to_le_bytes());
                page.extend_from_slice(&(key.len() as u32).to_le_bytes());
                page.extend_from_slice(&child.to_le_bytes());
            } else {
                page.extend_from_slice(&flags.to_le_bytes());
                page.extend_from_slice(&pos.to_le_bytes());
                page.extend_from_slice(&(key.len() as u32).to_le_bytes());
                page.extend_from_slice(&(value.len() as u32).to_le_bytes());
            }
            data += key.len() + value.len();
        }
        for (_, key, value, _) in self.elements.drain(..) {
            page.extend_from_slice(&key);
            page.extend_from_slice(&value);
        }
        if count != expected.count || page.len() != expected.bytes {
            return Err(io::Error::other(
                "the database's contents changed between planning and writing",
            ));
        }
        pad(&mut page);
        Ok(page)
    }
}

/// Writes the database `layout` planned for `contents` to `out`, page by page.
pub fn write(contents: &dyn Contents, layout: &Layout, out: &mut dyn Write) -> io::Result<()> {
    out.write_all(&meta_page(0, layout))?;
    out.write_all(&meta_page(1, layout))?;
    let mut freelist = Vec::with_capacity(PAGE_SIZE);
    page_header(&mut freelist, FREELIST_ID, FREELIST_PAGE, 0, 1);
    pad(&mut freelist);
    out.write_all(&freelist)?;

    let mut root = PageBuilder::new(LEAF_PAGE);
    for bucket in &layout.buckets {
        let mut header = bucket.root().to_le_bytes().to_vec();
        header.extend_from_slice(&0u64.to_le_bytes());
        root.elements.push((BUCKET_LEAF, bucket.name.clone(), header, 0));
    }
    out.write_all(&root.build(ROOT_ID, layout.root)?)?;

    for (index, bucket) in layout.buckets.iter().enumerate() {
        write_bucket(contents, index, bucket, out)?;
    }
    Ok(())
}

fn write_bucket(
    contents: &dyn Contents,
    index: usize,
    bucket: &BucketPlan,
    out: &mut dyn Write,
) -> io::Result<()> {
    let leaves = &bucket.levels[0];
    let mut first_keys: Vec<Vec<u8>> = Vec::with_capacity(leaves.len());
    let mut page = PageBuilder::new(LEAF_PAGE);
    let mut leaf = 0;
    let changed = || io::Error::other("the database's contents changed between planning and writing");
    contents.visit(index, &mut |key, value| {
        let group = *leaves.get(leaf).ok_or_else(changed)?;
        if page.elements.is_empty() {
            first_keys.push(key.to_vec());
        }
        page.elements.push((0, key.to_vec(), value.to_vec(), 0));
        if page.elements.len() == group.count {
            out.write_all(&page.build(bucket.ids[0][leaf], group)?)?;
            leaf += 1;
        }
        Ok(())
    })?;
    if leaves[0].count == 0 {
        out.write_all(&page.build(bucket.ids[0][0], leaves[0])?)?;
        first_keys.push(Vec::new());
        leaf = 1;
    }
    if leaf != leaves.len() {
        return Err(changed());
    }
    for level in 1..bucket.levels.len() {
        let mut children = bucket.ids[level - 1].iter().zip(first_keys);
        let mut next_first_keys = Vec::with_capacity(bucket.levels[level].len());
        for (group, id) in bucket.levels[level].iter().zip(&bucket.ids[level]) {
            let mut page = PageBuilder::new(BRANCH_PAGE);
            for (child, key) in children.by_ref().take(group.count) {
                if page.elements.is_empty() {
                    next_first_keys.push(key.clone());
                }
                page.elements.push((0, key, Vec::new(), *child));
            }
            out.write_all(&page.build(*id, *group)?)?;
        }
        first_keys = next_first_keys;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reading

/// A database file opened for reading: its chosen meta, checked against the file's size.
pub struct Database {
    file: File,
    page_size: usize,
    pages: u64,
    root: u64,
    freelist: u64,
}

/// What a walk meets, in file order: each top-level bucket, then its entries in key order.
pub enum Item<'a> {
    Bucket(&'a [u8]),
    Entry { key: &'a [u8], value: &'a [u8] },
}

struct Meta {
    page_size: usize,
    root: u64,
    freelist: u64,
    pages: u64,
    txid: u64,
}

fn parse_meta(bytes: &[u8]) -> Result<Meta, String> {
    let meta = bytes
        .get(PAGE_HEADER..PAGE_HEADER + META_CHECKSUMMED + 8)
        .ok_or("meta page is cut short")?;
    if u32_at(meta, 0) != MAGIC {
        return Err("bad magic number".into());
    }
    if u32_at(meta, 4) != VERSION {
        return Err(format!("format version {} (expected {VERSION})", u32_at(meta, 4)));
    }
    if fnv64a(&meta[..META_CHECKSUMMED]) != u64_at(meta, META_CHECKSUMMED) {
        return Err("meta checksum mismatch".into());
    }
    let page_size = u32_at(meta, 8) as usize;
    if !page_size.is_power_of_two() || !(512..=65536).contains(&page_size) {
        return Err(format!("unsupported page size {page_size}"));
    }
    Ok(Meta {
        page_size,
        root: u64_at(meta, 16),
        freelist: u64_at(meta, 32),
        pages: u64_at(meta, 40),
        txid: u64_at(meta, 48),
    })
}

fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0; len];
    file.read_exact_at(&mut bytes, offset)?;
    Ok(bytes)
}

impl Database {
    /// Opens the first `len` bytes of `file` as a database: the newer of the two valid metas wins,
    /// as in bbolt, and the file must hold every page it names.
    pub fn open(file: File, len: u64) -> Result<Database, BoltError> {
        let head_len = PAGE_SIZE.min(len as usize);
        let head = read_at(&file, 0, head_len)?;
        let first = parse_meta(&head);
        let second_at = match &first {
            Ok(meta) => vec![meta.page_size],
            Err(_) => vec![4096, 8192, 16384, 65536, 512, 1024, 2048, 32768],
        };
        let mut second = Err("not found".to_owned());
        for at in second_at {
            if at as u64 + (PAGE_HEADER + META_CHECKSUMMED + 8) as u64 > len {
                continue;
            }
            second = parse_meta(&read_at(&file, at as u64, PAGE_HEADER + META_CHECKSUMMED + 8)?).and_then(
                |meta| {
                    if meta.page_size == at {
                        Ok(meta)
                    } else {
                        Err("page size disagrees with its position".into())
                    }
                },
            );
            if second.is_ok() {
                break;
            }
        }
        let meta = match (first, second) {
            (Ok(a), Ok(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Ok(a), Err(_)) => a,
            (Err(_), Ok(b)) => b,
            (Err(a), Err(_)) => return Err(BoltError::NotBolt(a)),
        };
        let claimed = meta.pages.saturating_mul(meta.page_size as u64);
        if claimed > len {
            return Err(BoltError::Truncated {
                claimed,
                pages: meta.pages,
                page_size: meta.page_size,
                actual: len,
            });
        }
        if meta.pages < 3 || meta.root < 2 || meta.root >= meta.pages {
            return Err(corrupt(
                0,
                format!("meta names root page {} of {}", meta.root, meta.pages),
            ));
        }
        Ok(Database {
            file,
            page_size: meta.page_size,
            pages: meta.pages,
            root: meta.root,
            freelist: meta.freelist,
        })
    }

    /// Bytes the database occupies (pages up to its high-water mark), as bbolt's `Tx.Size`.
    pub fn size(&self) -> u64 {
        self.pages * self.page_size as u64
    }

    /// Reads page `id` with its overflow pages, checking it lies inside the database.
    fn page(&self, id: u64, seen: &mut [bool]) -> Result<Vec<u8>, BoltError> {
        if id < 2 || id >= self.pages {
            return Err(corrupt(
                id,
                format!("page ID outside the database's {} pages", self.pages),
            ));
        }
        let first = read_at(&self.file, id * self.page_size as u64, self.page_size)?;
        if u64_at(&first, 0) != id {
            return Err(corrupt(
                id,
                format!("page header names page {}", u64_at(&first, 0)),
            ));
        }
        let overflow = u64::from(u32_at(&first, 12));
        if id + overflow >= self.pages {
            return Err(corrupt(id, format!("{overflow} overflow pages run past the end")));
        }
        for page in id..=id + overflow {
            if std::mem::replace(&mut seen[page as usize], true) {
                return Err(corrupt(page, "page is used twice"));
            }
        }
        if overflow == 0 {
            return Ok(first);
        }
        Ok(read_at(
            &self.file,
            id * self.page_size as u64,
            (overflow as usize + 1) * self.page_size,
        )?)
    }

    /// Walks every bucket and entry in order, checking each page once, then that every page is
    /// either reachable or free (bbolt's consistency check). Top-level entries must be buckets and
    /// buckets must not nest: etcd's backend has that shape.
    pub fn walk<E: From<BoltError>>(
        &self,
        visit: &mut dyn FnMut(Item<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut seen = vec![false; self.pages as usize];
        seen[0] = true;
        seen[1] = true;
        let mut free = vec![false; self.pages as usize];
        if self.freelist != NO_FREELIST {
            let page = self.page(self.freelist, &mut seen)?;
            if u16_at(&page, 8) != FREELIST_PAGE {
                return Err(corrupt(self.freelist, "meta names a freelist page that is not one").into());
            }
            for id in freelist_ids(self.freelist, &page)? {
                if id < 2 || id >= self.pages || std::mem::replace(&mut free[id as usize], true) {
                    return Err(corrupt(self.freelist, format!("freelist holds page {id} wrongly")).into());
                }
            }
        }
        let mut buckets = Vec::new();
        self.walk_tree(self.root, &mut seen, 0, &mut |key, value, flags| {
            if flags & BUCKET_LEAF == 0 {
                return Err(corrupt(self.root, "the root holds a key that is not a bucket"));
            }
            buckets.push((key.to_vec(), value.to_vec()));
            Ok(())
        })?;
        for (name, header) in buckets {
            visit(Item::Bucket(&name))?;
            let bucket_name = String::from_utf8_lossy(&name).into_owned();
            let mut previous: Option<Vec<u8>> = None;
            let mut entry = |key: &[u8], value: &[u8], flags: u32| {
                if flags & BUCKET_LEAF != 0 {
                    return Err(corrupt(self.root, format!("bucket {bucket_name} nests a bucket")).into());
                }
                if previous.as_deref().is_some_and(|p| p >= key) {
                    return Err(
                        corrupt(self.root, format!("bucket {bucket_name}: keys out of order")).into(),
                    );
                }
                previous = Some(key.to_vec());
                visit(Item::Entry { key, value })
            };
            if header.len() < BUCKET_HEADER {
                return Err(corrupt(self.root, format!("bucket {bucket_name}: short header")).into());
            }
            let root = u64_at(&header, 0);
            if root == 0 {
                let inline = &header[BUCKET_HEADER..];
                if inline.len() < PAGE_HEADER || u16_at(inline, 8) != LEAF_PAGE {
                    return Err(corrupt(self.root, format!("bucket {bucket_name}: bad inline page")).into());
                }
                walk_leaf(self.root, inline, &mut entry)?;
            } else {
                self.walk_tree(root, &mut seen, 0, &mut entry)?;
            }
        }
        if self.freelist != NO_FREELIST
            && let Some(lost) = (0..self.pages as usize).find(|&id| !seen[id] && !free[id])
        {
            return Err(corrupt(lost as u64, "page is neither reachable nor free").into());
        }
        Ok(())
    }

    fn walk_tree<E: From<BoltError>>(
        &self,
        id: u64,
        seen: &mut [bool],
        depth: usize,
        entry: &mut ElementSink<'_, E>,
    ) -> Result<(), E> {
        if depth > MAX_DEPTH {
            return Err(corrupt(id, "tree deeper than any real database").into());
        }
        let page = self.page(id, seen)?;
        match u16_at(&page, 8) {
            LEAF_PAGE => walk_leaf(id, &page, entry),
            BRANCH_PAGE => {
                let count = usize::from(u16_at(&page, 10));
                if count == 0 || PAGE_HEADER + count * ELEMENT > page.len() {
                    return Err(corrupt(id, format!("branch page with {count} elements")).into());
                }
                for index in 0..count {
                    let at = PAGE_HEADER + index * ELEMENT;
                    let child = u64_at(&page, at + 8);
                    self.walk_tree(child, seen, depth + 1, entry)?;
                }
                Ok(())
            }
            other => Err(corrupt(id, format!("page type {other:#x} where a leaf or branch belongs")).into()),
        }
    }
}

fn freelist_ids(id: u64, page: &[u8]) -> Result<Vec<u64>, BoltError> {
    let mut count = usize::from(u16_at(page, 10));
    let mut start = PAGE_HEADER;
    if count == usize::from(u16::MAX) {
        let real = page
            .get(PAGE_HEADER..PAGE_HEADER + 8)
            .map(|b| u64_at(b, 0))
            .ok_or_else(|| corrupt(id, "freelist count is cut short"))?;
        count = usize::try_from(real).map_err(|_| corrupt(id, "freelist count too large"))?;
        start += 8;
    }
    let end = count
        .checked_mul(8)
        .and_then(|len| len.checked_add(start))
        .filter(|&end| end <= page.len())
        .ok_or_else(|| corrupt(id, format!("freelist of {count} pages does not fit its page")))?;
    Ok(page[start..end].chunks_exact(8).map(|b| u64_at(b, 0)).collect())
}

fn walk_leaf<E: From<BoltError>>(id: u64, page: &[u8], entry: &mut ElementSink<'_, E>) -> Result<(), E> {
    let count = usize::from(u16_at(page, 10));
    if PAGE_HEADER + count * ELEMENT > page.len() {
        return Err(corrupt(id, format!("leaf page with {count} elements does not fit")).into());
    }
    for index in 0..count {
        let at = PAGE_HEADER + index * ELEMENT;
        let flags = u32_at(page, at);
        let pos = u32_at(page, at + 4) as usize;
        let key_len = u32_at(page, at + 8) as usize;
        let value_len = u32_at(page, at + 12) as usize;
        let key_start = at + pos;
        let value_start = key_start + key_len;
        let Some(value) = page.get(value_start..value_start + value_len) else {
            return Err(corrupt(id, format!("element {index} points past the page")).into());
        };
        entry(&page[key_start..value_start], value, flags)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    struct Buckets(BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>>);

    impl Contents for Buckets {
        fn bucket_names(&self) -> Vec<Vec<u8>> {
            self.0.keys().cloned().collect()
        }
        fn visit(&self, bucket: usize, entry: &mut EntrySink<'_>) -> io::Result<()> {
            for (key, value) in self.0.values().nth(bucket).expect("bucket") {
                entry(key, value)?;
            }
            Ok(())
        }
    }

    fn write_file(contents: &Buckets) -> (tempfile::NamedTempFile, u64) {
        let layout = plan(contents).unwrap();
        let mut bytes = Vec::new();
        write(contents, &layout, &mut bytes).unwrap();
        assert_eq!(bytes.len() as u64, layout.size());
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&bytes).unwrap();
        (file, layout.size())
    }

    fn read_back(file: &tempfile::NamedTempFile, len: u64) -> Result<Buckets, BoltError> {
        let db = Database::open(file.reopen().unwrap(), len)?;
        let mut read = BTreeMap::new();
        let mut current = Vec::new();
        db.walk::<BoltError>(&mut |item| {
            match item {
                Item::Bucket(name) => {
                    current = name.to_vec();
                    read.insert(current.clone(), BTreeMap::new());
                }
                Item::Entry { key, value } => {
                    read.get_mut(&current)
                        .unwrap()
                        .insert(key.to_vec(), value.to_vec());
                }
            }
            Ok(())
        })?;
        Ok(Buckets(read))
    }

    fn contents() -> impl Strategy<Value = BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>>> {
        let value = prop_oneof![
            8 => proptest::collection::vec(any::<u8>(), 0..300),
            1 => proptest::collection::vec(any::<u8>(), 3000..20000),
        ];
        let bucket =
            proptest::collection::btree_map(proptest::collection::vec(any::<u8>(), 1..40), value, 0..400);
        proptest::collection::btree_map(proptest::collection::vec(any::<u8>(), 1..12), bucket, 0..5)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn what_is_written_reads_back_whole(buckets in contents()) {
            let (file, len) = write_file(&Buckets(buckets.clone()));
            let read = read_back(&file, len).unwrap();
            prop_assert_eq!(read.0, buckets);
        }
    }

    #[test]
    fn a_large_bucket_gets_branch_levels_and_reads_back() {
        let keys: BTreeMap<Vec<u8>, Vec<u8>> = (0..60_000u32)
            .map(|i| (i.to_be_bytes().to_vec(), vec![i as u8; 40]))
            .collect();
        let buckets = BTreeMap::from([(b"key".to_vec(), keys)]);
        let layout = plan(&Buckets(buckets.clone())).unwrap();
        assert!(
            layout.buckets[0].levels.len() >= 3,
            "{:?}",
            layout.buckets[0].levels.len()
        );
        let (file, len) = write_file(&Buckets(buckets.clone()));
        assert_eq!(read_back(&file, len).unwrap().0, buckets);
    }

    #[test]
    fn damaged_files_are_refused_by_what_is_wrong() {
        let buckets = BTreeMap::from([(
            b"key".to_vec(),
            (0..2000u32)
                .map(|i| (i.to_be_bytes().to_vec(), vec![7; 100]))
                .collect(),
        )]);
        let (file, len) = write_file(&Buckets(buckets));
        let truncated = read_back(&file, len - PAGE_SIZE as u64).err().unwrap();
        assert!(matches!(truncated, BoltError::Truncated { .. }), "{truncated}");

        let bytes = std::fs::read(file.path()).unwrap();
        let damage = |at: usize, with: &[u8]| {
            let mut changed = bytes.clone();
            changed[at..at + with.len()].copy_from_slice(with);
            let mut out = tempfile::NamedTempFile::new().unwrap();
            out.write_all(&changed).unwrap();
            read_back(&out, len).err().map(|e| e.to_string())
        };
        // Both metas garbled: not a database at all.
        let mut garbled = bytes.clone();
        garbled[16] ^= 1;
        garbled[PAGE_SIZE + 16] ^= 1;
        let mut out = tempfile::NamedTempFile::new().unwrap();
        out.write_all(&garbled).unwrap();
        assert!(matches!(read_back(&out, len), Err(BoltError::NotBolt(_))));
        // One meta garbled: the other still opens the file, as in bbolt.
        assert_eq!(damage(16, &[0]), None);
        // A leaf whose element points past its page.
        let leaf = FIRST_BUCKET_PAGE as usize * PAGE_SIZE;
        let error = damage(leaf + PAGE_HEADER + 4, &u32::MAX.to_le_bytes()).unwrap();
        assert!(error.contains("points past the page"), "{error}");
        // A page that names another page: the file is shuffled or overwritten.
        let error = damage(leaf, &99u64.to_le_bytes()).unwrap();
        assert!(error.contains("names page 99"), "{error}");
        // A branch pointing at a page twice.
        let last = len as usize - PAGE_SIZE;
        let first_child = u64_at(&bytes, last + PAGE_HEADER + 8);
        let error = damage(last + PAGE_HEADER + ELEMENT + 8, &first_child.to_le_bytes()).unwrap();
        assert!(error.contains("used twice"), "{error}");
    }
}
