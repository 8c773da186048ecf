package remote

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeSSH puts an ssh on PATH that runs script (sh) in place of a remote.
func fakeSSH(t *testing.T, script string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ssh"), []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
}

// An answer the remote wrote just before it exited is read whole, however
// late the reader comes to it.
func TestDialReadsAfterExit(t *testing.T) {
	fakeSSH(t, `printf 'HTTP/1.1 200 OK\r\n\r\ndone'`)
	c, err := SSH{Target: "host", Bin: "hostel"}.Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(300 * time.Millisecond) // ssh has exited and been waited for
	b, err := io.ReadAll(c)
	if err != nil || !strings.HasSuffix(string(b), "done") {
		t.Fatalf("read %q, %v", b, err)
	}
}

// ssh failing before a word of answer is the error, with what it said.
func TestDialSaysWhySSHFailed(t *testing.T) {
	fakeSSH(t, `echo "ssh: connect to host host port 22: Connection refused" >&2; exit 255`)
	c, err := SSH{Target: "host", Bin: "hostel"}.Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = io.ReadAll(c)
	if err == nil || !strings.Contains(err.Error(), "ssh host: ssh: connect to host host port 22: Connection refused") {
		t.Fatalf("error %v", err)
	}
}
