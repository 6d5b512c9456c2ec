//! Damage a stored file the way a fuzzer would: the loaders' property tests
//! (the agent's peer files, the phone engine's desktop files) apply a list
//! of edits to a real file's bytes.

/// Apply `edits` to `bytes` in order. Each is `(position, byte, op)`, the
/// position taken modulo the current length plus one: op 0 changes the byte
/// there (xor with `byte | 1`, so it always changes), 1 inserts `byte`
/// there, anything else cuts the bytes from there on.
pub fn apply(bytes: &mut Vec<u8>, edits: &[(usize, u8, u8)]) {
    for &(at, byte, op) in edits {
        let i = at % (bytes.len() + 1);
        match op {
            0 => {
                if let Some(b) = bytes.get_mut(i) {
                    *b ^= byte | 1;
                }
            }
            1 => bytes.insert(i, byte),
            _ => bytes.truncate(i),
        }
    }
}
