package api

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// The remote API (hostel serve --api-listen) is the same API as the unix
// socket's, over HTTPS, for a client that holds the daemon's token. The
// token is both the credential and the way the client knows the daemon:
//
//	hostel1.SECRET.PIN
//
// SECRET is 256 random bits; PIN is the SHA-256 of the daemon's TLS public
// key (its SubjectPublicKeyInfo), both base64url without padding. The
// client verifies the daemon's certificate against PIN alone, before it
// sends anything — there is no CA to configure and no way to skip the
// check: a token without a pin does not parse. The daemon compares the
// whole token, in constant time, with the one it made (ROOT/api/token).

// TokenEnv is the environment variable the client reads the token from;
// never a flag, which any user of the machine sees in ps.
const TokenEnv = "HOSTEL_TOKEN"

// tokenPrefix marks the token's format.
const tokenPrefix = "hostel1"

// Token is the remote API's credential: a secret and the pin of the
// daemon's public key.
type Token struct {
	Secret [32]byte
	Pin    [32]byte
}

// NewToken returns a token with a new random secret for the daemon whose
// TLS public key has pin.
func NewToken(pin [32]byte) (Token, error) {
	t := Token{Pin: pin}
	if _, err := rand.Read(t.Secret[:]); err != nil {
		return Token{}, err
	}
	return t, nil
}

// String is the token as the operator copies it.
func (t Token) String() string {
	enc := base64.RawURLEncoding
	return tokenPrefix + "." + enc.EncodeToString(t.Secret[:]) + "." + enc.EncodeToString(t.Pin[:])
}

// ParseToken parses a token as String writes it. Its errors never repeat
// the token.
func ParseToken(s string) (Token, error) {
	parts := strings.Split(strings.TrimSpace(s), ".")
	if len(parts) != 3 || parts[0] != tokenPrefix {
		return Token{}, errors.New("not a hostel token (want hostel1.SECRET.PIN, as in ROOT/api/token on the daemon's machine)")
	}
	var t Token
	for _, f := range []struct {
		name string
		text string
		to   []byte
	}{{"secret", parts[1], t.Secret[:]}, {"pin", parts[2], t.Pin[:]}} {
		b, err := base64.RawURLEncoding.DecodeString(f.text)
		if err != nil || len(b) != len(f.to) {
			return Token{}, fmt.Errorf("not a hostel token: its %s is not %d bytes of base64url", f.name, len(f.to))
		}
		copy(f.to, b)
	}
	return t, nil
}

// KeyPin is the pin of a public key: the SHA-256 of its DER
// SubjectPublicKeyInfo (the certificate's RawSubjectPublicKeyInfo), what
// HPKP and curl's --pinnedpubkey pin as well.
func KeyPin(spki []byte) [32]byte { return sha256.Sum256(spki) }

// pinText writes a pin as the token does.
func pinText(p [32]byte) string { return base64.RawURLEncoding.EncodeToString(p[:]) }

// RequireToken serves next only requests whose Authorization is "Bearer
// TOKEN" with the daemon's token; any other gets 401 and nothing else,
// whatever its path, and refused is told (with the request, to log its
// origin: never its header).
func RequireToken(token Token, next http.Handler, refused func(*http.Request)) http.Handler {
	want := sha256.Sum256([]byte(token.String()))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scheme, got, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		// Hashes of equal length: the comparison's time says nothing of
		// the token, not even its length.
		sum := sha256.Sum256([]byte(strings.TrimSpace(got)))
		if !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
			if refused != nil {
				refused(r)
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="hostel"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprintln(w, `{"error":{"kind":"invalid","message":"the remote API wants the daemon's token: Authorization: Bearer TOKEN"}}`)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// CheckRemoteURL says what is wrong with the address of a remote daemon
// (--api): it must be https://HOST:PORT and nothing more.
func CheckRemoteURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%q: want https://HOST:PORT", raw)
	}
	switch {
	case u.Scheme != "https":
		return nil, fmt.Errorf("%q: want https://HOST:PORT (the remote API is HTTPS only)", raw)
	case u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
		return nil, fmt.Errorf("%q: want https://HOST:PORT and nothing after it (the token goes in %s)", raw, TokenEnv)
	case u.Hostname() == "" || u.Port() == "":
		return nil, fmt.Errorf("%q: want https://HOST:PORT, with the port of the daemon's --api-listen", raw)
	}
	if n, err := strconv.Atoi(u.Port()); err != nil || n < 1 || n > 65535 {
		return nil, fmt.Errorf("%q: %q is not a port", raw, u.Port())
	}
	return &url.URL{Scheme: "https", Host: u.Host}, nil
}

// PinError is the TLS handshake's error when the daemon's key is not the
// one the token pins.
type PinError struct{ Got, Want [32]byte }

func (e *PinError) Error() string {
	return fmt.Sprintf("its key's SHA-256 is %s, the token pins %s", pinText(e.Got), pinText(e.Want))
}

// NewRemoteClient returns a client of the daemon at raw (https://HOST:PORT,
// its --api-listen) with token (HOSTEL_TOKEN). Its errors are input errors.
func NewRemoteClient(raw, token string) (*Client, error) {
	u, err := CheckRemoteURL(raw)
	if err != nil {
		return nil, &Error{Kind: KindInvalid, Message: "--api " + err.Error()}
	}
	if token == "" {
		return nil, &Error{Kind: KindInvalid, Message: fmt.Sprintf("--api %s: %s is not set: the daemon's token is in ROOT/api/token on its machine", u, TokenEnv)}
	}
	tok, err := ParseToken(token)
	if err != nil {
		return nil, &Error{Kind: KindInvalid, Message: fmt.Sprintf("--api %s: %s: %v", u, TokenEnv, err)}
	}
	tr := &http.Transport{
		Proxy:       http.ProxyFromEnvironment, // the pin holds through a CONNECT proxy
		DialContext: (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig: &tls.Config{
			MinVersion: tls.VersionTLS13,
			// The daemon's certificate is self-signed: no chain or name
			// to verify. VerifyConnection checks the one thing that
			// matters, its key against the token's pin, and fails the
			// handshake — before a request, the token in it, is sent.
			InsecureSkipVerify: true,
			VerifyConnection: func(cs tls.ConnectionState) error {
				if len(cs.PeerCertificates) == 0 {
					return &PinError{Want: tok.Pin}
				}
				got := KeyPin(cs.PeerCertificates[0].RawSubjectPublicKeyInfo)
				if !bytes.Equal(got[:], tok.Pin[:]) {
					return &PinError{Got: got, Want: tok.Pin}
				}
				return nil
			},
		},
		TLSHandshakeTimeout: 10 * time.Second,
		IdleConnTimeout:     30 * time.Second,
	}
	hc := &http.Client{Transport: tr,
		// The daemon never redirects; a redirect is not followed with the token.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return &Client{socket: u.String(), base: u.String(), token: tok.String(), hc: hc}, nil
}

// Remote reports whether the client reaches its daemon over the remote API.
func (c *Client) Remote() bool { return c.token != "" }

// Name says where the client's daemon is: its socket or its URL.
func (c *Client) Name() string { return c.socket }

// remoteError turns what the remote API's transport or answer says into
// the error the user sees; nil for anything else.
func (c *Client) remoteError(resp *http.Response, err error) error {
	if c.token == "" {
		return nil
	}
	var pe *PinError
	switch {
	case err != nil && errors.As(err, &pe):
		return &Error{Kind: KindFailed, Message: fmt.Sprintf("%s: the daemon there is not the one %s names (%v): another machine answers there, or its ROOT/api/key.pem was replaced — get its token again", c.base, TokenEnv, pe)}
	case resp != nil && resp.StatusCode == http.StatusUnauthorized:
		return &Error{Kind: KindInvalid, Message: fmt.Sprintf("%s: the daemon refused the token in %s (401): its token is in ROOT/api/token on its machine", c.base, TokenEnv)}
	}
	return nil
}
