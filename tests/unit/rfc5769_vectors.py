"""RFC 5769 "Test Vectors for Session Traversal Utilities for NAT (STUN)".

Exact message bytes of the four test vectors in RFC 5769 section 2, with the
documented inputs.  Hex was taken from copies of the RFC's hex dumps found in
two independent public code bases (a WebRTC-derived C test and a Rust test),
which agree byte-for-byte; test_rfc5769.py verifies each with the codec.

Notes (as in the RFC):
* In 2.1 the USERNAME padding bytes are 0x20 (spaces), not zero; in 2.2/2.3
  the SOFTWARE value "test vector" (11 bytes) is padded with one 0x20 byte.
  Padding bytes are covered by HMAC/CRC, so they must be kept verbatim.
* 2.4 has no FINGERPRINT attribute; MESSAGE-INTEGRITY is the last attribute.
* Short-term key (2.1-2.3) = the password bytes.
  Long-term key (2.4) = MD5(username ":" realm ":" password), password after
  SASLprep ("The\u00adM\u00aatr\u2168" -> "TheMatrIX").
"""

# ---------------------------------------------------------------- 2.1 ----
# Sample Request (Binding request, short-term credentials)
REQUEST_SOFTWARE = "STUN test client"
REQUEST_USERNAME = "evtj:h6vY"
REQUEST_PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"
REQUEST_TRANSACTION_ID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
REQUEST_PRIORITY = 0x6E0001FF            # PRIORITY attribute value
REQUEST_ICE_CONTROLLED = 0x932FF9B151263B36  # ICE-CONTROLLED tie-breaker

SAMPLE_REQUEST = bytes.fromhex(
    "00010058"                  # Request type and message length
    "2112a442"                  # Magic cookie
    "b7e7a701" "bc34d686" "fa87dfae"  # Transaction ID
    "80220010"                  # SOFTWARE attribute header
    "5354554e" "20746573" "7420636c" "69656e74"  # "STUN test client"
    "00240004"                  # PRIORITY attribute header
    "6e0001ff"                  # ICE priority value
    "80290008"                  # ICE-CONTROLLED attribute header
    "932ff9b1" "51263b36"       # tie breaker
    "00060009"                  # USERNAME attribute header
    "6576746a" "3a683676" "59202020"  # "evtj:h6vY" + 3 bytes 0x20 padding
    "00080014"                  # MESSAGE-INTEGRITY attribute header
    "9aeaa70c" "bfd8cb56" "781ef2b5" "b2d3f249" "c1b571a2"  # HMAC-SHA1
    "80280004"                  # FINGERPRINT attribute header
    "e57a3bcf"                  # CRC32 fingerprint
)

# ---------------------------------------------------------------- 2.2 ----
# Sample IPv4 Response (Binding success response)
RESPONSE_SOFTWARE = "test vector"
RESPONSE_PASSWORD = REQUEST_PASSWORD
RESPONSE_TRANSACTION_ID = REQUEST_TRANSACTION_ID
IPV4_MAPPED_ADDRESS = "192.0.2.1"
IPV4_MAPPED_PORT = 32853

SAMPLE_IPV4_RESPONSE = bytes.fromhex(
    "0101003c"                  # Response type and message length
    "2112a442"                  # Magic cookie
    "b7e7a701" "bc34d686" "fa87dfae"  # Transaction ID
    "8022000b"                  # SOFTWARE attribute header
    "74657374" "20766563" "746f7220"  # "test vector" + 1 byte 0x20 padding
    "00200008"                  # XOR-MAPPED-ADDRESS attribute header
    "0001a147"                  # family IPv4, xor'd port
    "e112a643"                  # xor'd IPv4 address
    "00080014"                  # MESSAGE-INTEGRITY attribute header
    "2b91f599" "fd9e90c3" "8c7489f9" "2af9ba53" "f06be7d7"
    "80280004"                  # FINGERPRINT attribute header
    "c07d4c96"                  # CRC32 fingerprint
)

# ---------------------------------------------------------------- 2.3 ----
# Sample IPv6 Response (Binding success response)
IPV6_MAPPED_ADDRESS = "2001:db8:1234:5678:11:2233:4455:6677"
IPV6_MAPPED_PORT = 32853

SAMPLE_IPV6_RESPONSE = bytes.fromhex(
    "01010048"                  # Response type and message length
    "2112a442"                  # Magic cookie
    "b7e7a701" "bc34d686" "fa87dfae"  # Transaction ID
    "8022000b"                  # SOFTWARE attribute header
    "74657374" "20766563" "746f7220"  # "test vector" + 0x20 padding
    "00200014"                  # XOR-MAPPED-ADDRESS attribute header
    "0002a147"                  # family IPv6, xor'd port
    "0113a9fa" "a5d3f179" "bc25f4b5" "bed2b9d9"  # xor'd IPv6 address
    "00080014"                  # MESSAGE-INTEGRITY attribute header
    "a382954e" "4be67bf1" "1784c97c" "8292c275" "bfe3ed41"
    "80280004"                  # FINGERPRINT attribute header
    "c8fb0b4c"                  # CRC32 fingerprint
)

# ---------------------------------------------------------------- 2.4 ----
# Sample Request with Long-Term Authentication
LT_USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"   # "マトリックス" (18 bytes UTF-8)
LT_PASSWORD_BEFORE_SASLPREP = "The\u00adM\u00aatr\u2168"
LT_PASSWORD = "TheMatrIX"                              # after SASLprep
LT_NONCE = "f//499k954d6OL34oL9FSTvy64sA"
LT_REALM = "example.org"
LT_TRANSACTION_ID = bytes.fromhex("78ad3433c6ad72c029da412e")

SAMPLE_REQUEST_LONG_TERM = bytes.fromhex(
    "00010060"                  # Request type and message length
    "2112a442"                  # Magic cookie
    "78ad3433" "c6ad72c0" "29da412e"  # Transaction ID
    "00060012"                  # USERNAME attribute header
    "e3839ee3" "8388e383" "aae38383" "e382afe3" "82b90000"  # 18 bytes + 2 zero pad
    "0015001c"                  # NONCE attribute header
    "662f2f34" "39396b39" "35346436" "4f4c3334" "6f4c3946" "53547679" "36347341"
    "0014000b"                  # REALM attribute header
    "6578616d" "706c652e" "6f726700"  # "example.org" + 1 zero pad
    "00080014"                  # MESSAGE-INTEGRITY attribute header
    "f6702465" "6dd64a3e" "02b8e071" "2e85c9a2" "8ca89666"
)
