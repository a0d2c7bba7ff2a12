//! One sequencer signature per batch of events: a Merkle tree over the events' signed
//! contents, its root signed once, and per event an inclusion proof (issue 17).
//!
//! The tree is RFC 9162's (Certificate Transparency v2, §2.1): SHA-256, leaf hashes
//! `SHA-256(0x00 || content)`, interior nodes `SHA-256(0x01 || left || right)`, and a batch
//! of `n` leaves split at the largest power of two below `n`. The distinct leaf and node
//! prefixes are what stop an interior node from passing as a leaf (a second preimage of the
//! tree). The signed payload is [`root_payload`]: the leaf count and the root, so a proof
//! for one batch size never verifies against a root signed for another.
//!
//! What a recipient can check, and what a forged proof gets, is argued in
//! `docs/architecture.md` ("Batch signatures").

use sha2::{Digest, Sha256};

/// A SHA-256 digest: a leaf, an interior node or the root.
pub type Hash = [u8; 32];

/// Longest inclusion path any batch can need: a batch has at most `u32::MAX` leaves.
/// Longer paths are refused before any hashing, so a peer cannot make us hash without bound.
pub const MAX_PATH_LEN: usize = 32;

/// Bytes of [`root_payload`].
pub const ROOT_PAYLOAD_LEN: usize = 4 + 32;

/// Why an inclusion proof does not lead to a root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is not below the leaf count {count}")]
    IndexOutOfRange { index: u32, count: u32 },
    #[error("inclusion path has {0} hashes; at most {MAX_PATH_LEN} are possible")]
    PathTooLong(usize),
    #[error("inclusion path hash {0} is not 32 bytes")]
    BadHashLength(usize),
    #[error("inclusion path length does not fit the leaf index and count")]
    WrongPathLength,
}

/// The leaf hash of one event's signed content.
#[must_use]
pub fn leaf_hash(content: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(content);
    h.finalize().into()
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The bytes the sequencer signs for a batch: the leaf count (4 bytes, big-endian) followed
/// by the 32-byte root.
#[must_use]
pub fn root_payload(count: u32, root: &Hash) -> [u8; ROOT_PAYLOAD_LEN] {
    let mut out = [0u8; ROOT_PAYLOAD_LEN];
    out[..4].copy_from_slice(&count.to_be_bytes());
    out[4..].copy_from_slice(root);
    out
}

/// One content's place in its batch, as `BatchProof` carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafProof {
    pub index: u32,
    pub count: u32,
    /// Sibling hashes from the leaf up to the root.
    pub path: Vec<Hash>,
}

/// Everything signing a batch of contents needs: the bytes to sign ([`root_payload`] of the
/// tree over them, in order) and each content's proof. `None` for an empty batch or one of
/// more than `u32::MAX` contents.
pub fn prepare<B: AsRef<[u8]>>(contents: &[B]) -> Option<([u8; ROOT_PAYLOAD_LEN], Vec<LeafProof>)> {
    let count = u32::try_from(contents.len()).ok()?;
    let leaves: Vec<Hash> = contents.iter().map(|c| leaf_hash(c.as_ref())).collect();
    let (root, paths) = tree(&leaves)?;
    let proofs = (0..count)
        .zip(paths)
        .map(|(index, path)| LeafProof { index, count, path })
        .collect();
    Some((root_payload(count, &root), proofs))
}

/// The root of `leaves` and, for each leaf in order, its inclusion path (sibling hashes from
/// the leaf up to the root, RFC 9162's `PATH`). `None` for an empty batch.
#[must_use]
pub fn tree(leaves: &[Hash]) -> Option<(Hash, Vec<Vec<Hash>>)> {
    if leaves.is_empty() {
        return None;
    }
    let depth = usize::BITS - (leaves.len() - 1).leading_zeros();
    let mut paths: Vec<Vec<Hash>> = (0..leaves.len())
        .map(|_| Vec::with_capacity(depth as usize))
        .collect();
    let root = subtree(leaves, &mut paths);
    Some((root, paths))
}

/// Hash of `leaves` (non-empty); appends each leaf's sibling at every level below, deepest
/// first, so each path runs from its leaf upwards.
fn subtree(leaves: &[Hash], paths: &mut [Vec<Hash>]) -> Hash {
    let n = leaves.len();
    if n == 1 {
        return leaves[0];
    }
    // The largest power of two strictly below n.
    let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
    let (left_paths, right_paths) = paths.split_at_mut(k);
    let left = subtree(&leaves[..k], left_paths);
    let right = subtree(&leaves[k..], right_paths);
    for p in left_paths {
        p.push(right);
    }
    for p in right_paths {
        p.push(left);
    }
    node_hash(&left, &right)
}

/// The root an inclusion proof leads to (RFC 9162 §2.1.3.2): the caller compares it with a
/// root whose signature it checked (or checks the signature over [`root_payload`] of it).
/// Work is bounded by [`MAX_PATH_LEN`] hashes whatever the input.
pub fn root_from_path<B: AsRef<[u8]>>(
    leaf: Hash,
    index: u32,
    count: u32,
    path: &[B],
) -> Result<Hash, ProofError> {
    if index >= count {
        return Err(ProofError::IndexOutOfRange { index, count });
    }
    if path.len() > MAX_PATH_LEN {
        return Err(ProofError::PathTooLong(path.len()));
    }
    let mut f = index;
    let mut s = count - 1;
    let mut r = leaf;
    for (i, p) in path.iter().enumerate() {
        let p: &Hash = p
            .as_ref()
            .try_into()
            .map_err(|_| ProofError::BadHashLength(i))?;
        if s == 0 {
            return Err(ProofError::WrongPathLength);
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                // f == s: this subtree's right edge; skip the levels where it has no sibling.
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::WrongPathLength);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    /// RFC 9162's MTH, written the obvious recursive way, as the reference.
    fn mth(leaves: &[Hash]) -> Hash {
        if leaves.len() == 1 {
            return leaves[0];
        }
        let k = (1..leaves.len())
            .map(|i| 1usize << i.ilog2())
            .max()
            .unwrap_or(1);
        node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
    }

    #[test]
    fn every_proof_of_every_size_leads_to_the_root() {
        for n in 1..=70 {
            let l = leaves(n);
            let (root, paths) = tree(&l).expect("non-empty");
            assert_eq!(root, mth(&l), "root of {n} leaves");
            for (i, path) in paths.iter().enumerate() {
                let got = root_from_path(l[i], i as u32, n as u32, path);
                assert_eq!(got, Ok(root), "leaf {i} of {n}");
            }
        }
        assert!(tree(&[]).is_none());
    }

    #[test]
    fn prepared_proofs_lead_to_the_signed_root() {
        let contents: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 10]).collect();
        let (payload, proofs) = prepare(&contents).expect("non-empty");
        assert_eq!(proofs.len(), 6);
        for (c, p) in contents.iter().zip(&proofs) {
            assert_eq!(p.count, 6);
            let root = root_from_path(leaf_hash(c), p.index, p.count, &p.path).expect("proof");
            assert_eq!(root_payload(p.count, &root), payload);
        }
        assert!(prepare::<Vec<u8>>(&[]).is_none());
    }

    #[test]
    fn a_single_leaf_is_its_own_root_with_an_empty_path() {
        let l = leaves(1);
        let (root, paths) = tree(&l).expect("non-empty");
        assert_eq!(root, l[0]);
        assert_eq!(paths, vec![Vec::<Hash>::new()]);
    }

    #[test]
    fn a_proof_does_not_move_to_another_leaf_index() {
        let l = leaves(13);
        let (root, paths) = tree(&l).expect("non-empty");
        for (i, path) in paths.iter().enumerate() {
            for j in 0..13u32 {
                if j as usize != i {
                    assert_ne!(root_from_path(l[i], j, 13, path), Ok(root), "{i} as {j}");
                }
            }
            // The same path can fit another leaf count (the tree's shape near this leaf
            // can be the same), which is why the count is part of the signed payload.
            // Another leaf's content with this leaf's path.
            let other = l[(i + 1) % 13];
            assert_ne!(root_from_path(other, i as u32, 13, path), Ok(root));
        }
    }

    #[test]
    fn an_interior_node_is_not_a_leaf() {
        // The left half of 4 leaves is node(l0, l1); presenting it as a leaf of a
        // 2-leaf tree with path [node(l2, l3)] gives a different root than the 4-leaf one,
        // because leaves and nodes hash with different prefixes.
        let l = leaves(4);
        let (root, _) = tree(&l).expect("non-empty");
        let left = node_hash(&l[0], &l[1]);
        let right = node_hash(&l[2], &l[3]);
        assert_eq!(root_from_path(left, 0, 2, &[right]), Ok(root));
        // ...which is why the count is signed with the root: a recipient only accepts the
        // 2-leaf reading against a signature over root_payload(2, root), never made.
        assert_ne!(root_payload(2, &root), root_payload(4, &root));
        // And a leaf hash is never a node hash of the same bytes.
        let mut joined = Vec::new();
        joined.extend_from_slice(&l[0]);
        joined.extend_from_slice(&l[1]);
        assert_ne!(leaf_hash(&joined), left);
    }

    #[test]
    fn malformed_paths_are_refused_without_hashing_much() {
        let l = leaves(5);
        let (_, paths) = tree(&l).expect("non-empty");
        assert_eq!(
            root_from_path(l[0], 5, 5, &paths[0]),
            Err(ProofError::IndexOutOfRange { index: 5, count: 5 })
        );
        let long = vec![[0u8; 32]; MAX_PATH_LEN + 1];
        assert_eq!(
            root_from_path(l[0], 0, u32::MAX, &long),
            Err(ProofError::PathTooLong(MAX_PATH_LEN + 1))
        );
        let short: Vec<Vec<u8>> = vec![vec![0u8; 31]];
        assert_eq!(
            root_from_path(l[0], 0, 5, &short),
            Err(ProofError::BadHashLength(0))
        );
        let mut extra = paths[0].clone();
        extra.push([9u8; 32]);
        assert_eq!(
            root_from_path(l[0], 0, 5, &extra),
            Err(ProofError::WrongPathLength)
        );
        let mut missing = paths[0].clone();
        missing.pop();
        assert_eq!(
            root_from_path(l[0], 0, 5, &missing),
            Err(ProofError::WrongPathLength)
        );
    }
}
