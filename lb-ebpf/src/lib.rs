#![no_std]
// Lets cargo build the library target that lb-userspace's build dependency needs.
