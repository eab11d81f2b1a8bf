package sso

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
)

// sealLabel separates the sealing key from every other use of the key it
// is derived from.
const sealLabel = "devgpu sso refresh token seal v1"

// Seal encrypts a provider refresh token for the store with a key
// derived from key (the agent key); Open reverses it, failing when the
// key is not the one that sealed it.
//
// The sealed form is a random 12-byte nonce followed by the AES-256-GCM
// ciphertext, under HMAC-SHA256(key, sealLabel).
func Seal(key []byte, plaintext string) ([]byte, error) {
	aead, err := sealAEAD(key)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plaintext)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("seal refresh token: %w", err)
	}
	return aead.Seal(nonce, nonce, []byte(plaintext), []byte(sealLabel)), nil
}

// ErrSealKey is Open's failure: sealed was made with another key, or
// was changed since.
var ErrSealKey = errors.New("the stored identity-provider refresh token cannot be opened with this server's agent key (the key changed, or the stored value was altered); the person must log in again with `devgpu login`")

func Open(key, sealed []byte) (string, error) {
	aead, err := sealAEAD(key)
	if err != nil {
		return "", err
	}
	if len(sealed) < aead.NonceSize()+aead.Overhead() {
		return "", ErrSealKey
	}
	n := aead.NonceSize()
	plain, err := aead.Open(nil, sealed[:n], sealed[n:], []byte(sealLabel))
	if err != nil {
		return "", ErrSealKey
	}
	return string(plain), nil
}

func sealAEAD(key []byte) (cipher.AEAD, error) {
	if len(key) == 0 {
		return nil, errors.New("sealing a refresh token needs the agent key, and it is empty; configure the server's agent key")
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(sealLabel))
	block, err := aes.NewCipher(m.Sum(nil))
	if err != nil {
		return nil, fmt.Errorf("seal refresh token: %w", err)
	}
	return cipher.NewGCM(block)
}
