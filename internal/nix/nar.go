package nix

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
)

// DumpNAR writes the NAR (Nix ARchive) of path to w, as `nix-store --dump`
// does, without a process per path: a cache serves one NAR per store path
// of a closure, and Nix checks each against the hash its .narinfo states,
// so a wrong byte is refused there, never added to a store.
//
// The format (Dolstra's thesis, fig. 5.2): strings are a 64-bit
// little-endian length, the bytes and zeros to a multiple of 8; a NAR is
// "nix-archive-1" and the node of path, each node "(" "type" and a
// regular file ("regular", "executable" "" if its owner may execute it,
// "contents" and its bytes), a symbolic link ("symlink", "target" and its
// target) or a directory ("directory", then "entry" "(" "name" NAME
// "node" NODE ")" for each entry in the byte order of their names), then
// ")".
func DumpNAR(path string, w io.Writer) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	n := &narWriter{w: bw}
	n.str("nix-archive-1")
	if err := n.node(path); err != nil {
		return err
	}
	if n.err != nil {
		return n.err
	}
	return bw.Flush()
}

type narWriter struct {
	w   *bufio.Writer
	err error
	buf [8]byte
}

func (n *narWriter) str(s string) {
	n.size(uint64(len(s)))
	if n.err == nil {
		_, n.err = n.w.WriteString(s)
	}
	n.pad(uint64(len(s)))
}

func (n *narWriter) size(v uint64) {
	if n.err != nil {
		return
	}
	binary.LittleEndian.PutUint64(n.buf[:], v)
	_, n.err = n.w.Write(n.buf[:])
}

func (n *narWriter) pad(size uint64) {
	if r := size % 8; r != 0 && n.err == nil {
		var zero [8]byte
		_, n.err = n.w.Write(zero[:8-r])
	}
}

func (n *narWriter) node(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	n.str("(")
	n.str("type")
	switch {
	case fi.Mode().IsRegular():
		n.str("regular")
		if fi.Mode()&0o100 != 0 {
			n.str("executable")
			n.str("")
		}
		n.str("contents")
		if err := n.contents(path, fi.Size()); err != nil {
			return err
		}
	case fi.Mode()&os.ModeSymlink != 0:
		target, err := os.Readlink(path)
		if err != nil {
			return err
		}
		n.str("symlink")
		n.str("target")
		n.str(target)
	case fi.IsDir():
		n.str("directory")
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			return err
		}
		sort.Strings(names) // byte order, as Nix's
		for _, name := range names {
			n.str("entry")
			n.str("(")
			n.str("name")
			n.str(name)
			n.str("node")
			if err := n.node(filepath.Join(path, name)); err != nil {
				return err
			}
			n.str(")")
		}
	default:
		return fmt.Errorf("%s: a %s has no NAR form", path, fi.Mode().Type())
	}
	n.str(")")
	return n.err
}

// contents writes a regular file's size, bytes and padding; a file whose
// size changed under it (never, in a store) is an error.
func (n *narWriter) contents(path string, size int64) error {
	n.size(uint64(size))
	if n.err != nil {
		return n.err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	copied, err := io.Copy(n.w, io.LimitReader(f, size))
	if err != nil {
		return err
	}
	if copied != size {
		return fmt.Errorf("%s: %d bytes, not %d", path, copied, size)
	}
	n.pad(uint64(size))
	return n.err
}
