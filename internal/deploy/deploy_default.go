//go:build !linux

package deploy

import (
	"context"
	"io"
)

// Deployment is a running emulated deployment (Linux only).
type Deployment struct{}

// Up needs Linux.
func Up(context.Context, Options) (*Deployment, error) { return nil, ErrNotSupported }

// Close does nothing.
func (d *Deployment) Close() error { return nil }

// RunDemo needs Linux.
func RunDemo(context.Context, io.Writer) error { return ErrNotSupported }

// Build needs Linux (the deployment it serves does).
func Build(context.Context, string) error { return ErrNotSupported }

// RunDemoWith needs Linux.
func RunDemoWith(context.Context, io.Writer, Options) error { return ErrNotSupported }
