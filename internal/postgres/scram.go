package postgres

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"strconv"
	"strings"
)

// scramMatches reports whether a SCRAM-SHA-256 secret as PostgreSQL stores
// it ("SCRAM-SHA-256$ITER:SALT$STOREDKEY:SERVERKEY") was made from password.
// hostel generates ASCII passwords, so SASLprep changes nothing.
func scramMatches(secret, password string) bool {
	rest, ok := strings.CutPrefix(secret, "SCRAM-SHA-256$")
	if !ok {
		return false
	}
	params, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return false
	}
	iterS, saltS, ok := strings.Cut(params, ":")
	if !ok {
		return false
	}
	storedS, _, ok := strings.Cut(keys, ":")
	if !ok {
		return false
	}
	iter, err := strconv.Atoi(iterS)
	if err != nil || iter <= 0 {
		return false
	}
	salt, err1 := base64.StdEncoding.DecodeString(saltS)
	stored, err2 := base64.StdEncoding.DecodeString(storedS)
	if err1 != nil || err2 != nil {
		return false
	}
	salted, err := pbkdf2.Key(sha256.New, password, salt, iter, sha256.Size)
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, salted)
	mac.Write([]byte("Client Key"))
	sum := sha256.Sum256(mac.Sum(nil))
	return hmac.Equal(sum[:], stored)
}
