//go:build linux

package perf

import (
	"bytes"
	"image/png"
	"os"
	"testing"
)

func TestChartPNG(t *testing.T) {
	rep := sampleReport()
	b, err := rep.ChartPNG()
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if r := img.Bounds(); r.Dx() < 800 || r.Dy() < 300 {
		t.Fatalf("chart is %v", r)
	}
	if dir := os.Getenv("PERF_CHART_OUT"); dir != "" {
		_ = os.WriteFile(dir+"/chart.png", b, 0o644)
	}
}
