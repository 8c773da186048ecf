package cli

import (
	"fmt"
	"io"
	"text/tabwriter"

	"hostel/internal/api"
)

// writeCertificates prints, when HTTPS is on, the certificate of each public
// host of the services shown: "cert: valid until …" or "cert: failing: …".
func writeCertificates(w io.Writer, st *api.Status) error {
	if st.Listen.HTTPS == "" || len(st.Certificates) == 0 {
		return nil
	}
	shown := map[string]bool{}
	for _, s := range st.Services {
		shown[s.Name] = true
	}
	fmt.Fprintf(w, "\nhttps %s\n", st.Listen.HTTPS)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tSERVICE\tCERTIFICATE")
	for _, c := range st.Certificates {
		if shown[c.Service] {
			fmt.Fprintf(tw, "%s\t%s\tcert: %s\n", c.Host, c.Service, c.Status)
		}
	}
	return tw.Flush()
}
