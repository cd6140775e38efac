// Command agate-interop checks agate's signed checkpoints and Merkle proofs
// against the reference Go implementations (golang.org/x/mod/sumdb/note,
// github.com/transparency-dev/formats/log and github.com/transparency-dev/merkle).
//
// Usage: agate-interop <subcommand> < request.json
//
// Each subcommand reads one JSON object on stdin and writes one JSON object on
// stdout. Exit status: 0 success; 1 verification failure ({"error": ...});
// 2 usage error (bad arguments or malformed request; {"error": ...} as well).
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"
	"strings"

	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/merkle/testonly"
	"golang.org/x/mod/sumdb/note"
)

// usageError marks a malformed invocation or request (exit status 2).
type usageError struct{ error }

var commands = map[string]func([]byte) (any, error){
	"verify-note":  verifyNote,
	"sign-note":    signNote,
	"generate-key": generateKey,
	"inclusion":    inclusion,
	"consistency":  consistency,
	"leaf-hash":    leafHash,
	"vectors":      vectors,
}

func main() {
	var cmd func([]byte) (any, error)
	if len(os.Args) == 2 {
		cmd = commands[os.Args[1]]
	}
	var (
		in  []byte
		out any
		err error
	)
	switch {
	case cmd == nil:
		err = usageError{errors.New("usage: agate-interop verify-note|sign-note|generate-key|inclusion|consistency|leaf-hash|vectors < request.json")}
	case os.Args[1] != "vectors":
		in, err = io.ReadAll(os.Stdin)
	}
	if err == nil {
		out, err = cmd(in)
	}
	code := 0
	if err != nil {
		out, code = map[string]string{"error": err.Error()}, 1
		if errors.As(err, new(usageError)) {
			code = 2
		}
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(out); err != nil {
		code = 2
	}
	os.Exit(code)
}

// decode parses exactly one JSON object into the struct pointed to by v,
// rejecting unknown fields, trailing data, and missing fields (every field is
// required unless its tag says omitempty).
func decode(in []byte, v any) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(in, &raw); err != nil {
		return usageError{fmt.Errorf("request: %w", err)}
	}
	t := reflect.TypeOf(v).Elem()
	for i := range t.NumField() {
		name, opts, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if _, ok := raw[name]; !ok && opts != "omitempty" {
			return usageError{fmt.Errorf("request: missing field %q", name)}
		}
	}
	dec := json.NewDecoder(bytes.NewReader(in))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return usageError{fmt.Errorf("request: %w", err)}
	}
	return nil
}

var b64 = base64.StdEncoding.Strict()

// hash32 decodes a canonical base64 SHA-256 hash.
func hash32(what, s string) ([]byte, error) {
	h, err := b64.DecodeString(s)
	if err != nil || len(h) != 32 || b64.EncodeToString(h) != s {
		return nil, fmt.Errorf("%s: want canonical base64 of 32 bytes, got %q", what, s)
	}
	return h, nil
}

func hashes32(what string, ss []string) ([][]byte, error) {
	out := make([][]byte, len(ss))
	for i, s := range ss {
		h, err := hash32(fmt.Sprintf("%s[%d]", what, i), s)
		if err != nil {
			return nil, err
		}
		out[i] = h
	}
	return out, nil
}

func verifyNote(in []byte) (any, error) {
	var req struct {
		VKey   string `json:"vkey"`
		Note   string `json:"note"`
		Origin string `json:"origin,omitempty"` // defaults to the note's first line
	}
	if err := decode(in, &req); err != nil {
		return nil, err
	}
	v, err := note.NewVerifier(req.VKey)
	if err != nil {
		return nil, fmt.Errorf("vkey: %w", err)
	}
	origin := req.Origin
	if origin == "" {
		origin, _, _ = strings.Cut(req.Note, "\n")
	}
	// ParseCheckpoint = note.Open with this verifier, then the C2SP checkpoint
	// body parse, then the origin check.
	cp, rest, n, err := log.ParseCheckpoint([]byte(req.Note), origin, v)
	if err != nil {
		return nil, err
	}
	// Stricter than log.Checkpoint.Unmarshal: canonical size and 32-byte root.
	lines := strings.SplitN(n.Text, "\n", 4)
	if lines[1] != strconv.FormatUint(cp.Size, 10) {
		return nil, fmt.Errorf("checkpoint: non-canonical tree size %q", lines[1])
	}
	if _, err := hash32("checkpoint root", lines[2]); err != nil {
		return nil, err
	}
	extensions := []string{}
	if len(rest) > 0 {
		extensions = strings.Split(strings.TrimSuffix(string(rest), "\n"), "\n")
	}
	for _, e := range extensions {
		if e == "" {
			return nil, errors.New("checkpoint: empty extension line")
		}
	}
	signers := []string{}
	for _, s := range n.Sigs {
		signers = append(signers, s.Name)
	}
	return map[string]any{
		"origin":     cp.Origin,
		"size":       cp.Size,
		"root":       b64.EncodeToString(cp.Hash),
		"extensions": extensions,
		"signers":    signers,
	}, nil
}

func signNote(in []byte) (any, error) {
	var req struct {
		SKey string `json:"skey"`
		Text string `json:"text"`
	}
	if err := decode(in, &req); err != nil {
		return nil, err
	}
	s, err := note.NewSigner(req.SKey)
	if err != nil {
		return nil, fmt.Errorf("skey: %w", err)
	}
	msg, err := note.Sign(&note.Note{Text: req.Text}, s)
	if err != nil {
		return nil, err
	}
	return map[string]string{"note": string(msg)}, nil
}

func generateKey(in []byte) (any, error) {
	var req struct {
		Name string `json:"name"`
	}
	if err := decode(in, &req); err != nil {
		return nil, err
	}
	skey, vkey, err := note.GenerateKey(rand.Reader, req.Name)
	if err != nil {
		return nil, err
	}
	// GenerateKey does not validate the name; NewSigner does.
	if _, err := note.NewSigner(skey); err != nil {
		return nil, fmt.Errorf("name %q: %w", req.Name, err)
	}
	return map[string]string{"skey": skey, "vkey": vkey}, nil
}

func inclusion(in []byte) (any, error) {
	var req struct {
		Index    uint64   `json:"index"`
		Size     uint64   `json:"size"`
		LeafHash string   `json:"leaf_hash"`
		Root     string   `json:"root"`
		Proof    []string `json:"proof"`
	}
	if err := decode(in, &req); err != nil {
		return nil, err
	}
	leaf, err := hash32("leaf_hash", req.LeafHash)
	if err != nil {
		return nil, err
	}
	root, err := hash32("root", req.Root)
	if err != nil {
		return nil, err
	}
	p, err := hashes32("proof", req.Proof)
	if err != nil {
		return nil, err
	}
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, req.Index, req.Size, leaf, p, root); err != nil {
		return nil, err
	}
	return map[string]bool{"ok": true}, nil
}

func consistency(in []byte) (any, error) {
	var req struct {
		Size1 uint64   `json:"size1"`
		Size2 uint64   `json:"size2"`
		Root1 string   `json:"root1"`
		Root2 string   `json:"root2"`
		Proof []string `json:"proof"`
	}
	if err := decode(in, &req); err != nil {
		return nil, err
	}
	root1, err := hash32("root1", req.Root1)
	if err != nil {
		return nil, err
	}
	root2, err := hash32("root2", req.Root2)
	if err != nil {
		return nil, err
	}
	p, err := hashes32("proof", req.Proof)
	if err != nil {
		return nil, err
	}
	if err := proof.VerifyConsistency(rfc6962.DefaultHasher, req.Size1, req.Size2, p, root1, root2); err != nil {
		return nil, err
	}
	return map[string]bool{"ok": true}, nil
}

func leafHash(in []byte) (any, error) {
	var req struct {
		Data string `json:"data"`
	}
	if err := decode(in, &req); err != nil {
		return nil, err
	}
	data, err := b64.DecodeString(req.Data)
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	return map[string]string{"hash": b64.EncodeToString(rfc6962.DefaultHasher.HashLeaf(data))}, nil
}

type proofVector struct {
	Index *uint64  `json:"index,omitempty"`
	Size  *uint64  `json:"size,omitempty"`
	Size1 *uint64  `json:"size1,omitempty"`
	Size2 *uint64  `json:"size2,omitempty"`
	Proof []string `json:"proof"`
}

func hexAll(bs [][]byte) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = hex.EncodeToString(b)
	}
	return out
}

// vectors emits transparency-dev/merkle's testonly RFC 6962 data: the fixed
// leaf inputs, leaf hashes and root hashes, plus every inclusion and
// consistency proof over those leaves from its reference tree, each checked
// against the fixed root hashes before being emitted.
func vectors([]byte) (any, error) {
	h := rfc6962.DefaultHasher
	leaves, roots := testonly.LeafInputs(), testonly.RootHashes()
	tree := testonly.New(h)
	tree.AppendData(leaves...)
	n := tree.Size()
	if !bytes.Equal(roots[0], h.EmptyRoot()) || !bytes.Equal(roots[0], testonly.EmptyRootHash()) {
		return nil, errors.New("testonly: empty root mismatch")
	}
	for size := uint64(0); size <= n; size++ {
		if !bytes.Equal(tree.HashAt(size), roots[size]) {
			return nil, fmt.Errorf("testonly: root mismatch at size %d", size)
		}
	}
	leafHashes := testonly.NodeHashes()[0]
	for i := range leaves {
		if !bytes.Equal(h.HashLeaf(leaves[i]), leafHashes[i]) {
			return nil, fmt.Errorf("testonly: leaf hash mismatch at %d", i)
		}
	}
	incl, cons := []proofVector{}, []proofVector{}
	for size := uint64(1); size <= n; size++ {
		for index := uint64(0); index < size; index++ {
			p, err := tree.InclusionProof(index, size)
			if err == nil {
				err = proof.VerifyInclusion(h, index, size, leafHashes[index], p, roots[size])
			}
			if err != nil {
				return nil, fmt.Errorf("inclusion %d/%d: %w", index, size, err)
			}
			incl = append(incl, proofVector{Index: &index, Size: &size, Proof: hexAll(p)})
		}
		for size1 := uint64(1); size1 <= size; size1++ {
			p, err := tree.ConsistencyProof(size1, size)
			if err == nil {
				err = proof.VerifyConsistency(h, size1, size, p, roots[size1], roots[size])
			}
			if err != nil {
				return nil, fmt.Errorf("consistency %d/%d: %w", size1, size, err)
			}
			cons = append(cons, proofVector{Size1: &size1, Size2: &size, Proof: hexAll(p)})
		}
	}
	return map[string]any{
		"leaves":      hexAll(leaves),
		"leaf_hashes": hexAll(leafHashes),
		"empty_root":  hex.EncodeToString(roots[0]),
		"roots":       hexAll(roots[1:]), // roots[k]: tree of the first k+1 leaves
		"inclusion":   incl,
		"consistency": cons,
	}, nil
}
