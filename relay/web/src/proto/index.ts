// The Tandem protocol core for the web client (mirrors proto/src, see README.md).
export * from './bytes.ts';
export * from './kdf.ts';
export * from './identity.ts';
export * from './entropy.ts';
export * from './frame.ts';
export * from './relayAuth.ts';
export * from './envelope.ts';
export * from './content.ts';
export * from './qr.ts';
export * from './noise.ts';
export * from './record.ts';
export * from './handshake.ts';
export * from './sas.ts';
export * from './pairing.ts';
export * from './session.ts';
export * from './message.ts';
