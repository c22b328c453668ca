//go:build linux

package perf

import (
	"bytes"
	"fmt"
	"image/color"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

var (
	colPPS = color.RGBA{R: 0x2b, G: 0x6c, B: 0xb0, A: 0xff}
	colLF  = color.RGBA{R: 0x8c, G: 0xb4, B: 0xdc, A: 0xff}
	colP50 = color.RGBA{R: 0x3a, G: 0x9d, B: 0x5d, A: 0xff}
	colP99 = color.RGBA{R: 0xd0, G: 0x7a, B: 0x1f, A: 0xff}
	colTCP = color.RGBA{R: 0x7b, G: 0x4f, B: 0xa8, A: 0xff}
)

// ChartPNG draws three panels side by side: UDP packets/s delivered under
// flood and loss-free, request/response latency p50 and p99, and TCP
// throughput, one bar group per dataplane (medians; the spread is in the
// tables).
func (rep *Report) ChartPNG() ([]byte, error) {
	var names []string
	var pps, lf, p50, p99, tcp plotter.Values
	for _, s := range rep.Summary {
		names = append(names, s.Dataplane)
		v := func(x Summary) float64 {
			if x.Valid() {
				return x.Median
			}
			return 0
		}
		pps = append(pps, v(s.DeliveredPPS)/1e3)
		lf = append(lf, v(s.LossFreePPS)/1e3)
		p50 = append(p50, v(s.P50us))
		p99 = append(p99, v(s.P99us))
		tcp = append(tcp, v(s.TCPGbps))
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("no dataplane measured")
	}
	w := vg.Points(40)
	pp := newPanel(names, "UDP 64 B delivered", "k packets/s (median)")
	if err := addBars(pp, w, pps, colPPS, -w/2, "flood"); err != nil {
		return nil, err
	}
	if err := addBars(pp, w, lf, colLF, w/2, "loss-free"); err != nil {
		return nil, err
	}
	pp.Legend.Top = true
	pl := newPanel(names, "Request/response latency", "µs (median)")
	if err := addBars(pl, w, p50, colP50, -w/2, "p50"); err != nil {
		return nil, err
	}
	if err := addBars(pl, w, p99, colP99, w/2, "p99"); err != nil {
		return nil, err
	}
	pl.Legend.Top = true
	pt := newPanel(names, "TCP (iperf3)", "Gbit/s (median)")
	if err := addBars(pt, w, tcp, colTCP, 0, ""); err != nil {
		return nil, err
	}
	img := vgimg.New(vg.Points(1200), vg.Points(420))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 3, PadX: vg.Points(20), PadY: vg.Points(10), PadTop: vg.Points(10), PadBottom: vg.Points(10), PadLeft: vg.Points(10), PadRight: vg.Points(10)}
	plots := [][]*plot.Plot{{pp, pl, pt}}
	canvases := plot.Align(plots, tiles, dc)
	for j, p := range plots[0] {
		p.Draw(canvases[0][j])
	}
	var buf bytes.Buffer
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(&buf); err != nil {
		return nil, fmt.Errorf("png: %w", err)
	}
	return buf.Bytes(), nil
}

// newPanel is one chart panel: a bar group per dataplane name, the y axis
// from 0.
func newPanel(names []string, title, ylabel string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font.Size = vg.Points(13)
	p.Y.Label.Text = ylabel
	p.Y.Min = 0
	p.NominalX(names...)
	p.X.Min, p.X.Max = -0.6, float64(len(names))-0.4
	p.X.Tick.Label.Font.Size = vg.Points(12)
	p.Add(plotter.NewGrid())
	return p
}

// addBars adds one bar series of width w, shifted by off, each bar labelled
// with its value, and its legend entry unless legend is empty.
func addBars(p *plot.Plot, w vg.Length, vals plotter.Values, c color.Color, off vg.Length, legend string) error {
	b, err := plotter.NewBarChart(vals, w)
	if err != nil {
		return err
	}
	// Headroom above the tallest bar for its label and the legend.
	for _, v := range vals {
		p.Y.Max = max(p.Y.Max, v*1.25)
	}
	xys := make(plotter.XYs, len(vals))
	texts := make([]string, len(vals))
	for i, v := range vals {
		xys[i] = plotter.XY{X: float64(i), Y: v}
		texts[i] = label(v)
	}
	lb, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: texts})
	if err != nil {
		return err
	}
	for i := range lb.TextStyle {
		lb.TextStyle[i].XAlign = draw.XCenter
		lb.TextStyle[i].YAlign = draw.YBottom
		lb.TextStyle[i].Font.Size = vg.Points(10)
	}
	lb.Offset = vg.Point{X: off, Y: vg.Points(2)}
	b.Color = c
	b.LineStyle.Width = 0
	b.Offset = off
	p.Add(b, lb)
	if legend != "" {
		p.Legend.Add(legend, b)
	}
	return nil
}

// label formats a bar's value with three significant digits.
func label(v float64) string {
	switch {
	case v == 0:
		return "—"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}
