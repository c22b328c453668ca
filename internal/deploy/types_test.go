package deploy

import (
	"errors"
	"testing"
)

func TestErrNotSupported(t *testing.T) {
	if !errors.Is(ErrNotSupported, errors.ErrUnsupported) {
		t.Error("ErrNotSupported is not an errors.ErrUnsupported")
	}
}
