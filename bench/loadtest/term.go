package main

import (
	"os"
	"os/signal"
	"syscall"
)

func waitTerm() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, os.Interrupt)
	<-c
}
