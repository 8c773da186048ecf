package handover

import (
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// TestPassConns: client connections sent over a control socket, back to
// back and with the bytes read ahead of them (none, a few, more than one
// read of the socket carries), come out in order, each the same
// connection: what its client sends next is read from it, and what is
// written to it reaches the client.
func TestPassConns(t *testing.T) {
	old, next := unixPair(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	pendings := [][]byte{nil, []byte("GET / HT"), bytes.Repeat([]byte("x"), 9000)}
	var clients []net.Conn
	sender, err := NewConnSender(old)
	if err != nil {
		t.Fatal(err)
	}
	for i := range pendings {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		clients = append(clients, c)
		srv, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		fd, err := DupConn(srv)
		if err != nil {
			t.Fatal(err)
		}
		if err := sender.Send(fd, pendings[i]); err != nil {
			t.Fatalf("Send %d: %v", i, err)
		}
		CloseAll([]int{fd})
		srv.Close() // the sender's copies are gone: the connection lives on in the message
	}
	old.Close()

	type got struct {
		c       net.Conn
		pending []byte
	}
	var received []got
	if err := ReceiveConns(next, func(c net.Conn, pending []byte) { received = append(received, got{c, pending}) }); err != nil {
		t.Fatalf("ReceiveConns: %v", err)
	}
	if len(received) != len(pendings) {
		t.Fatalf("received %d connections, want %d", len(received), len(pendings))
	}
	for i, r := range received {
		defer r.c.Close()
		if !bytes.Equal(r.pending, pendings[i]) && len(r.pending)+len(pendings[i]) > 0 {
			t.Errorf("connection %d: pending %d bytes, want %d", i, len(r.pending), len(pendings[i]))
		}
		msg := "next request " + strings.Repeat("!", i)
		clients[i].Write([]byte(msg))
		r.c.SetDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, len(msg))
		if _, err := io.ReadFull(r.c, b); err != nil || string(b) != msg {
			t.Errorf("connection %d: read %q, %v; want %q from its client", i, b, err, msg)
		}
		r.c.Write([]byte("answer"))
		clients[i].SetDeadline(time.Now().Add(5 * time.Second))
		b = make([]byte, 6)
		if _, err := io.ReadFull(clients[i], b); err != nil || string(b) != "answer" {
			t.Errorf("connection %d: the client read %q, %v", i, b, err)
		}
	}
}
